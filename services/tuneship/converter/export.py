"""The export stage, top to bottom: convert → imatrix → quantize → verify → evaluate → report."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tuneship.common.atomic import staged_dir
from tuneship.common.conversations import Conversation, load_conversations
from tuneship.common.errors import InvalidInput
from tuneship.common.events import EventSink, Log, Metrics, Progress
from tuneship.common.gguf_meta import read_gguf
from tuneship.common.spec import PipelineSpec
from tuneship.common.toolchain import Toolchain
from tuneship.converter.convert import convert, lineage_metadata, require_convertible
from tuneship.converter.evaluate import against_baseline, baseline, context_for, held_out_ids
from tuneship.converter.quantize import check_types, compute_imatrix, needs_imatrix, quantize
from tuneship.converter.render import write_rendered
from tuneship.converter.report import ExportReport, QuantReport, recommend, write_report
from tuneship.converter.template import check_template_accepts
from tuneship.converter.verify import VerifyResult, verify

STAGE = "export"
EXPORT_MANIFEST = "export-manifest.json"


@dataclass(frozen=True)
class ExportResult:
    """Everything the export wrote into ``out`` (``files`` lists each, manifest last)."""

    out: Path
    baseline: Path
    ggufs: dict[str, Path]
    imatrix: Path | None
    report: ExportReport
    files: list[Path]


def export(
    spec: PipelineSpec,
    model: Path,
    out: Path,
    events: EventSink,
    toolchain: Toolchain,
    *,
    data: Mapping[str, Path] | None = None,
) -> ExportResult:
    """Export the merged HF model ``model`` into ``out`` as the spec's GGUFs plus a report.

    The conversations are ``spec.dataset`` read and split exactly as training did (any
    format training accepts; ``data`` maps ``train``/``eval`` to local copies when a
    worker fetched them): the held-out split is scored and checked for template parity,
    the training split feeds the importance matrix. ``out`` is replaced once everything
    is written. Errors: ``InvalidInput`` (types, data, a template that refuses a
    conversation), ``FailedPrecondition`` (a model that cannot be converted, a GGUF that
    fails to load or to match the template).
    """
    ex = spec.export
    check_types(ex.quant_types, imatrix_policy=ex.imatrix)
    if ex.outtype == "q8_0" and any(t != "q8_0" for t in ex.quant_types):
        raise InvalidInput(
            "quantizing from a q8_0 GGUF would quantize twice and lose quality",
            where="export.outtype",
            hint="use outtype f16 or bf16 as the baseline, and q8_0 as one of the quant_types",
        )
    conversations = load_conversations(spec.dataset, data)
    require_convertible(model)  # before anything reads the tokenizer or writes to out
    held_out = conversations.eval
    if not held_out:
        events.emit(Log(STAGE, "no held-out conversations (dataset.eval_fraction is 0): "
                               "evaluating on training conversations", "warning"))  # fmt: skip
        held_out = conversations.train
    check_template_accepts(model, held_out)
    name = spec.metadata.name
    with staged_dir(out) as work:
        result = _run(spec, model, work, events, toolchain, held_out, conversations.train, name)
    return _relocate(result, work, out)


def _run(
    spec: PipelineSpec,
    model: Path,
    work: Path,
    events: EventSink,
    toolchain: Toolchain,
    held_out: list[Conversation],
    train: list[Conversation],
    name: str,
) -> ExportResult:
    ex = spec.export
    scratch = work / "scratch"
    scratch.mkdir()
    steps = 5
    events.emit(Progress(STAGE, 0, steps, message=f"converting to {ex.outtype}"))
    base_gguf = work / f"{name}-{ex.outtype}.gguf"
    convert(model, base_gguf, toolchain=toolchain, events=events, outtype=ex.outtype,
            metadata=lineage_metadata(model, name), conversations=held_out)  # fmt: skip
    imatrix = None
    if ex.imatrix == "always" or (
        ex.imatrix == "auto" and any(needs_imatrix(t) for t in ex.quant_types)
    ):
        events.emit(Progress(STAGE, 1, steps, message="computing the importance matrix"))
        tokens = write_rendered(model, train, scratch / "imatrix.txt")
        imatrix = compute_imatrix(
            base_gguf, scratch / "imatrix.txt", work / f"{name}.imatrix.gguf",
            toolchain=toolchain, events=events, context=context_for(tokens, ex.eval_context),
            chunks=ex.imatrix_chunks,
        )  # fmt: skip
    events.emit(Progress(STAGE, 2, steps, message=f"quantizing {', '.join(ex.quant_types)}"))
    quants = quantize(base_gguf, work, ex.quant_types, toolchain=toolchain, events=events,
                      imatrix=imatrix, name=name)  # fmt: skip
    ggufs = {ex.outtype: base_gguf} | {q.quant_type: q.gguf for q in quants}
    events.emit(Progress(STAGE, 3, steps, message="verifying and evaluating every GGUF"))
    report = evaluate(
        model, ex.outtype, ggufs, held_out, toolchain=toolchain, events=events, work=scratch,
        max_kld=ex.max_kld, max_context=ex.eval_context, max_tokens=ex.eval_tokens,
        check=ex.verify, name=name,
    )  # fmt: skip
    files = [*ggufs.values(), *([imatrix] if imatrix else []), *write_report(report, work)]
    shutil.rmtree(scratch)
    files.append(_write_manifest(work, spec, model, files, report))
    events.emit(Progress(STAGE, steps, steps, message=f"recommended: {report.recommended}"))
    events.emit(Log(STAGE, f"recommended {report.recommended}: {report.reason}"))
    return ExportResult(work, base_gguf, ggufs, imatrix, report, files)


def evaluate(
    model: Path,
    baseline_type: str,
    ggufs: dict[str, Path],
    held_out: list[Conversation],
    *,
    toolchain: Toolchain,
    events: EventSink,
    work: Path,
    max_kld: float,
    max_context: int = 256,
    max_tokens: int = 2048,
    check: bool = True,
    name: str = "model",
) -> ExportReport:
    """Verify (when ``check``) and score every GGUF against ``ggufs[baseline_type]``.

    ``model`` is the HF directory the GGUFs came from: its tokenizer and template give
    the held-out token ids, and it is the reference for template parity.
    """
    work.mkdir(parents=True, exist_ok=True)
    checks: dict[str, VerifyResult | None] = {
        quant_type: verify(path, model, toolchain=toolchain, events=events, work=work,
                           conversations=held_out) if check else None
        for quant_type, path in ggufs.items()
    }  # fmt: skip
    sequences = held_out_ids(model, held_out, context=max_context, max_tokens=max_tokens)
    logprobs = work / "baseline-logprobs.npy"
    try:  # the saved distributions are large: never leave them behind
        rows = _score(baseline_type, ggufs, sequences, logprobs, checks, toolchain, events)
    finally:
        logprobs.unlink(missing_ok=True)
    recommended, reason = recommend(rows, max_kld)
    context = max(len(s) for s in sequences)
    tokens = sum(len(s) - 1 for s in sequences)
    return ExportReport(name, max_kld, tokens, context, rows, recommended, reason)


def _score(
    baseline_type: str,
    ggufs: dict[str, Path],
    sequences: list[list[int]],
    logprobs: Path,
    checks: dict[str, VerifyResult | None],
    toolchain: Toolchain,
    events: EventSink,
) -> list[QuantReport]:
    """One report row per GGUF: the baseline saves its distributions, the rest compare."""
    base = baseline(ggufs[baseline_type], sequences, logprobs, toolchain=toolchain)
    rows = []
    for quant_type, path in ggufs.items():
        is_base = quant_type == baseline_type
        quality = (
            base if is_base else against_baseline(path, sequences, logprobs, toolchain=toolchain)
        )
        info, result = read_gguf(path), checks[quant_type]
        rows.append(QuantReport(
            quant_type=quant_type, file=path.name, size_bytes=info.size_bytes,
            bits_per_weight=round(info.bits_per_weight, 3), perplexity=quality.perplexity,
            kld_mean=quality.kld_mean, same_top_p=quality.same_top_p,
            prompt_tokens_per_s=result.prompt_tokens_per_s if result else 0.0,
            generation_tokens_per_s=result.generation_tokens_per_s if result else 0.0,
            verified=result is not None, baseline=is_base,
        ))  # fmt: skip
        events.emit(Metrics(STAGE, {"kld_mean": quality.kld_mean,
                                    "perplexity": quality.perplexity}))  # fmt: skip
    return rows


def _write_manifest(
    work: Path, spec: PipelineSpec, model: Path, files: list[Path], report: ExportReport
) -> Path:
    payload = {
        "stage": STAGE,
        "model": str(model),
        "export": spec.export.model_dump(),
        "recommended": report.recommended,
        "files": [{"path": p.name, "size": p.stat().st_size} for p in files],
    }
    path = work / EXPORT_MANIFEST
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def _relocate(result: ExportResult, work: Path, out: Path) -> ExportResult:
    def moved(path: Path) -> Path:
        return out / path.relative_to(work)

    return ExportResult(
        out=out,
        baseline=moved(result.baseline),
        ggufs={k: moved(v) for k, v in result.ggufs.items()},
        imatrix=moved(result.imatrix) if result.imatrix else None,
        report=result.report,
        files=[moved(p) for p in result.files],
    )
