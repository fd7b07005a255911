"""``tuneship merge | convert | quantize | evaluate | export``: the export stage from a terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneship.cli.errors import fail
from tuneship.common import events as ev
from tuneship.common.errors import TuneshipError
from tuneship.common.settings import Settings
from tuneship.common.spec import PipelineSpec, load_spec, parse_spec
from tuneship.common.toolchain import find_toolchain

console = Console()


class LineSink:
    """Prints stage events as lines: one per progress message change, every log line."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self.last = ""

    def emit(self, event: ev.Event) -> None:
        if isinstance(event, ev.Log):
            style = {"warning": "yellow", "error": "red"}.get(event.level, "dim")
            self.out.print(f"[{style}]{event.stage}: {escape(event.message)}[/]")
        elif isinstance(event, ev.Progress):
            if event.total == 0 and event.step % 50 != 1:
                return  # open-ended counts (tensors planned): a line now and then
            total = f"/{event.total}" if event.total else ""
            line = f"{event.stage} {event.step}{total} {event.unit} {event.message}".strip()
            if event.message != self.last or event.total in (0, event.step):
                self.out.print(f"[cyan]{escape(line)}[/]", highlight=False)
                self.last = event.message


def _spec(path: Path | None, **sections: dict) -> PipelineSpec:
    """The spec file, or a minimal one built from the command-line options."""
    if path is not None:
        spec = load_spec(path)
        updates = {k: getattr(spec, k).model_copy(update=v) for k, v in sections.items() if v}
        return spec.model_copy(update=updates)
    body = {"apiVersion": "tuneship/v1", "metadata": {"name": "model"},
            "model": {"base": "."}, "dataset": {"train": "-"}, **sections}  # fmt: skip
    return parse_spec(json.dumps(body), "<command line>")


def merge_cmd(
    base: Annotated[Path, typer.Argument(help="Base model directory.")],
    train_out: Annotated[Path, typer.Argument(help="Training output (adapter/, manifest).")],
    out: Annotated[Path, typer.Argument(help="Merged model directory (replaced).")],
    spec: Annotated[Path | None, typer.Option(help="Pipeline spec (merge section).")] = None,
    dtype: Annotated[str | None, typer.Option(help="float16 | bfloat16 | float32")] = None,
) -> None:
    """Merge a trained adapter into its base: one HF model with a consistent vocabulary."""
    from tuneship.merger import merge

    try:
        pipeline = _spec(spec, merge={"dtype": dtype} if dtype else {})
        result = merge(pipeline, base, train_out, out, LineSink(console))
    except TuneshipError as exc:
        raise fail(exc) from exc
    v = result.vocab
    console.print(f"merged into {out} ({result.dtype}): {v.tokenizer_size} tokens = "
                  f"{v.rows_saved} embedding rows (merged had {v.rows_merged})")  # fmt: skip


def convert_cmd(
    model: Annotated[Path, typer.Argument(help="HF model directory (e.g. merged).")],
    out: Annotated[Path, typer.Argument(help="GGUF file to write.")],
    outtype: Annotated[str, typer.Option(help="f16 | bf16 | f32 | q8_0 | auto")] = "f16",
    name: Annotated[str | None, typer.Option(help="general.name in the GGUF.")] = None,
) -> None:
    """Convert an HF model to GGUF (training-only template tags removed, metadata set)."""
    from tuneship.converter import convert, lineage_metadata

    toolchain = find_toolchain(Settings.from_env())
    try:
        result = convert(model, out, toolchain=toolchain, events=LineSink(console),
                         outtype=outtype, metadata=lineage_metadata(model, name))  # fmt: skip
    except TuneshipError as exc:
        raise fail(exc) from exc
    stripped = " (generation tags removed)" if result.template_stripped else ""
    console.print(f"wrote {out} in {result.seconds:.1f}s{stripped}")


def quantize_cmd(
    source: Annotated[Path, typer.Argument(help="f16/bf16/f32 GGUF.")],
    out_dir: Annotated[Path, typer.Argument(help="Directory for the quantized GGUFs.")],
    types: Annotated[list[str], typer.Option("--type", "-t", help="llama-quantize type; repeat.")],
    imatrix: Annotated[Path | None, typer.Option(help="An existing importance matrix.")] = None,
    data: Annotated[Path | None, typer.Option(help="Conversations (JSONL) for an imatrix.")] = None,
    model: Annotated[
        Path | None, typer.Option(help="HF dir whose template renders --data.")
    ] = None,
) -> None:
    """Quantize one GGUF into one or many types (IQ types need --imatrix or --data)."""
    from tuneship.common.conversations import read_conversations
    from tuneship.converter import compute_imatrix, quantize
    from tuneship.converter.evaluate import context_for
    from tuneship.converter.quantize import check_types
    from tuneship.converter.render import write_rendered

    toolchain = find_toolchain(Settings.from_env())
    sink = LineSink(console)
    try:
        check_types(types, imatrix_policy="auto", where="--type")
        if imatrix is None and data is not None:
            if model is None:
                raise TuneshipError("--data needs --model (the HF dir whose template renders it)")
            text = out_dir / f"{source.stem}.imatrix.txt"
            tokens = write_rendered(model, read_conversations(data), text)
            imatrix = compute_imatrix(source, text, out_dir / f"{source.stem}.imatrix.gguf",
                                      toolchain=toolchain, events=sink,
                                      context=context_for(tokens))  # fmt: skip
            text.unlink()
        outputs = quantize(source, out_dir, types, toolchain=toolchain, events=sink,
                           imatrix=imatrix)  # fmt: skip
    except TuneshipError as exc:
        raise fail(exc) from exc
    for output in outputs:
        console.print(f"{output.quant_type}: {output.gguf} ({output.seconds:.1f}s)")


def evaluate_cmd(
    baseline_gguf: Annotated[Path, typer.Argument(help="The f16/bf16 baseline GGUF.")],
    quantized: Annotated[list[Path], typer.Argument(help="Quantized GGUFs to compare.")],
    model: Annotated[Path, typer.Option(help="HF dir the GGUFs came from (template, tokenizer).")],
    data: Annotated[Path, typer.Option(help="Held-out conversations (JSONL).")],
    out: Annotated[Path, typer.Option(help="Directory for report.json/.md/.png.")],
    max_kld: Annotated[float, typer.Option(help="Quality budget (mean KLD).")] = 0.1,
    verify: Annotated[bool, typer.Option(help="Load each GGUF and check parity.")] = True,
) -> None:
    """Verify and score quantized GGUFs against a baseline; write the report."""
    from tuneship.common.conversations import read_conversations
    from tuneship.converter import evaluate, write_report

    toolchain = find_toolchain(Settings.from_env())
    ggufs = {"baseline": baseline_gguf} | {p.stem: p for p in quantized}
    try:
        report = evaluate(model, "baseline", ggufs, read_conversations(data),
                          toolchain=toolchain, events=LineSink(console), work=out / ".work",
                          max_kld=max_kld, check=verify, name=model.name)  # fmt: skip
        paths = write_report(report, out)
    except TuneshipError as exc:
        raise fail(exc) from exc
    _print_report_table(report)
    console.print(f"report: {', '.join(str(p) for p in paths)}")


def export_cmd(
    model: Annotated[Path, typer.Argument(help="Merged HF model directory.")],
    out: Annotated[Path, typer.Argument(help="Output directory (replaced).")],
    spec: Annotated[Path, typer.Option(help="Pipeline spec (export section, dataset).")],
    data: Annotated[
        Path | None, typer.Option(help="Held-out conversations (default: the spec's split).")
    ] = None,
) -> None:
    """The whole export: convert, quantize, verify, evaluate, report."""
    from tuneship.converter import export

    toolchain = find_toolchain(Settings.from_env())
    try:
        pipeline = load_spec(spec)
        if data is not None:
            dataset = pipeline.dataset.model_copy(update={"eval": str(data)})
            pipeline = pipeline.model_copy(update={"dataset": dataset})
        result = export(pipeline, model, out, LineSink(console), toolchain)
    except TuneshipError as exc:
        raise fail(exc) from exc
    _print_report_table(result.report)
    console.print(f"wrote {len(result.files)} files to {out}")


def _print_report_table(report: object) -> None:
    from tuneship.converter import ExportReport

    assert isinstance(report, ExportReport)
    table = Table(title=f"export report (budget: mean KLD ≤ {report.max_kld})")
    for column in ("type", "MB", "bpw", "PPL", "mean KLD", "gen tok/s", "verified"):
        table.add_column(column)
    for r in report.rows:
        mark = " ★" if r.quant_type == report.recommended else ""
        table.add_row(f"{r.quant_type}{mark}", f"{r.size_bytes / 1e6:.2f}",
                      f"{r.bits_per_weight:.2f}", f"{r.perplexity:.2f}", f"{r.kld_mean:.5f}",
                      f"{r.generation_tokens_per_s:.0f}", "yes" if r.verified else "-")  # fmt: skip
    console.print(table)
    console.print(f"recommended: {report.recommended} — {report.reason}")


def register(app: typer.Typer) -> None:
    """Add the export-stage commands to the ``tuneship`` app."""
    app.command("merge")(merge_cmd)
    app.command("convert")(convert_cmd)
    app.command("quantize")(quantize_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("export")(export_cmd)
