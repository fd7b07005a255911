"""``tuneship train`` and ``tuneship inspect-data``: the training stage from a terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tuneship.cli.errors import fail
from tuneship.common import events as ev
from tuneship.common.errors import InvalidInput, TuneshipError
from tuneship.common.spec import PipelineSpec, load_spec


class RichTrainSink:
    """Renders training events: a progress bar with loss and tokens/s, and log lines."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task: Any = None

    def __enter__(self) -> RichTrainSink:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def emit(self, event: ev.Event) -> None:
        if isinstance(event, ev.Log):
            style = {"warning": "yellow", "error": "red"}.get(event.level, "dim")
            self.bar.console.print(f"[{style}]{escape(event.message)}[/]")
        elif isinstance(event, ev.Progress):
            if self.task is None:
                self.task = self.bar.add_task("train", total=event.total, loss="-", rate="-")
            self.bar.update(self.task, completed=event.step, total=event.total)
        elif isinstance(event, ev.Metrics) and self.task is not None and "loss" in event.values:
            # (an evaluation's metrics, eval_loss alone, reach the screen as a log line)
            values = event.values
            self.bar.update(
                self.task,
                loss=f"{values['loss']:.4f}",
                rate=f"{values.get('tokens_per_s', 0.0):,.0f}",
            )


def local_base(spec: PipelineSpec) -> Path:
    """The base model directory (remote URIs are fetched by the services, not here)."""
    if "://" in spec.model.base:
        raise InvalidInput(
            f"{spec.model.base} is not a local directory",
            where="model.base",
            hint="download the model first and point model.base at its directory",
        )
    return Path(spec.model.base)


def quiet_libraries() -> None:
    """Progress and advice go through tuneship's own output, not the libraries' bars."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*save_embedding_layers.*")


def run_train(spec_path: Path, out: Path, resume: bool, console: Console) -> dict[str, Any]:
    """Train from a spec file; returns the training manifest."""
    from tuneship.trainer import train

    quiet_libraries()
    spec = load_spec(spec_path)
    with RichTrainSink(console) as sink:
        result = train(spec, local_base(spec), out.resolve(), sink, resume=resume)
    metrics = result.manifest["metrics"]
    if "eval_reward_margin" in metrics:
        console.print(
            f"held-out pairs: reward margin {metrics['eval_reward_margin']:.3f}, chosen "
            f"preferred in {metrics.get('eval_reward_accuracy', 0):.0%}"
        )
    console.print(
        f"[green]done:[/] {metrics['steps']} steps, final loss {metrics['final_loss']:.4f}, "
        f"{metrics['train_tokens_per_s']:,.0f} tokens/s, padding {metrics['padding_fraction']:.1%}"
        f"\n  adapter, tokenizer and training-manifest.json in {result.out}"
    )
    return result.manifest


def run_inspect(spec_path: Path, count: int, as_json: bool, console: Console) -> None:
    """Print ``count`` rendered examples with the trained tokens highlighted (or JSON)."""
    from tuneship.trainer import inspect_data

    quiet_libraries()
    spec = load_spec(spec_path)
    report = inspect_data(spec, local_base(spec), count)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        return
    for item in report:
        side = f"{item['side']}: " if "side" in item else ""  # a preference pair's side
        console.rule(
            f"{side}{item['where']}  trained {item['trained_tokens']} / masked "
            f"{item['masked_tokens']} tokens"
        )
        text = "".join(
            f"[black on green]{escape(s['text'])}[/]" if s["trained"] else escape(s["text"])
            for s in item["segments"]
        )
        console.print(text, highlight=False)
    console.print("[black on green]highlighted[/]: trained tokens (labels); the rest is masked")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``inspect-data`` to the ``tuneship`` app."""
    app.command("train")(train_command)
    app.command("inspect-data")(inspect_data_command)


def train_command(
    spec: Annotated[Path, typer.Argument(help="Pipeline spec (YAML).")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (created when done).")],
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore checkpoints and start over.")
    ] = False,
) -> None:
    """Fine-tune the spec's base model on its conversations (resumes after a crash)."""
    try:
        run_train(spec, out, not restart, Console())
    except TuneshipError as error:
        raise fail(error) from error


def inspect_data_command(
    spec: Annotated[Path, typer.Argument(help="Pipeline spec (YAML).")],
    n: Annotated[int, typer.Option("-n", help="How many examples to show.")] = 3,
    as_json: Annotated[
        bool, typer.Option("--json", help="Per example: trained spans (decoded) and counts.")
    ] = False,
) -> None:
    """Show rendered training examples with the trained tokens highlighted."""
    try:
        run_inspect(spec, n, as_json, Console())
    except TuneshipError as error:
        raise fail(error) from error
