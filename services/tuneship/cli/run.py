"""``tuneship run``: a whole pipeline on this machine (embedded controller and services)."""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneship.cli.errors import fail
from tuneship.cli.progress import follow
from tuneship.client import PipelineClient, PipelineInfo
from tuneship.common.errors import TuneshipError
from tuneship.common.logs import configure_logging
from tuneship.common.settings import Settings, load_env
from tuneship.common.spec import PipelineSpec, load_spec

if TYPE_CHECKING:  # the console (aiohttp) is imported only when asked for
    from tuneship.console import RunningConsole

out = Console()
err = Console(stderr=True)


def quickstart(data_dir: Path) -> Path:
    """Build the quickstart's tiny model and data (once) and return its spec path."""
    from tuneship.quickstart.conversations import write_sample_datasets
    from tuneship.quickstart.tiny_models import build_fixture

    root = data_dir / "quickstart"
    if not (root / "tiny-chatml" / "config.json").is_file():
        err.print("[dim]building the quickstart's tiny base model and conversations…[/]")
        build_fixture("tiny-chatml", root / "tiny-chatml")
    if not (root / "data" / "pirate" / "train.jsonl").is_file():
        write_sample_datasets(root / "data")
    spec = root / "quickstart.yaml"
    bundled = resources.files("tuneship.cli").joinpath("quickstart.yaml").read_text()
    if not spec.is_file() or spec.read_text() != bundled:
        spec.write_text(bundled)
    return spec


def summarize(info: PipelineInfo, data_dir: Path, console: Console) -> None:
    """Where the artifacts are, the quality report and the published model."""
    table = Table(title=f"pipeline {info.id}: {info.phase}")
    for column in ("stage", "phase", "attempts", "output"):
        table.add_column(column)
    for stage in info.stages:
        table.add_row(
            stage.name, stage.phase, str(stage.attempts), ", ".join(stage.outputs.values())
        )
    console.print(table)
    console.print(f"artifacts: {data_dir / 'store'}")
    export = info.stage("export")
    report_key = next(iter(export.outputs.values()), "").replace("manifest.json", "")
    report = _report(data_dir, export)
    if report:
        quality = Table(title=f"quality report (recommended: {report.get('recommended')})")
        for column in ("type", "size MiB", "bits/weight", "perplexity", "mean KLD", "gen tok/s"):
            quality.add_column(column)
        for row in report.get("rows", []):
            quality.add_row(
                row["quant_type"], f"{row['size_bytes'] / 2**20:.2f}",
                f"{row['bits_per_weight']:.2f}", f"{row['perplexity']:.3f}",
                f"{row['kld_mean']:.4f}", f"{row['generation_tokens_per_s']:.0f}",
            )  # fmt: skip
        console.print(quality)
    elif report_key:
        console.print(f"report: {report_key}")
    publish = info.stage("publish")
    if publish.summary.get("model"):
        console.print(
            f"served as [bold]{publish.summary['model']}[/] ({publish.summary.get('backend')})"
        )


def _report(data_dir: Path, export: Any) -> dict[str, Any] | None:
    manifest_key = next(iter(export.outputs.values()), "")
    manifest_path = data_dir / "store" / manifest_key
    if not manifest_key or not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    report = data_dir / "store" / manifest["root"] / "report.json"
    return json.loads(report.read_text()) if report.is_file() else None


def run(
    spec: Annotated[
        Path | None, typer.Argument(help="Pipeline spec; none: the quickstart.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="State, store and work files.")] = None,
    backend: Annotated[
        str, typer.Option(help="auto (the spec's serve.backend) | ollama | llama-server")
    ] = "auto",
    ollama_url: Annotated[
        str, typer.Option("--ollama-url", envvar="OLLAMA_HOST", help="Ollama's base URL.")
    ] = "http://127.0.0.1:11434",
    keep_serving: Annotated[
        bool, typer.Option(help="Keep the model served (Ctrl-C stops) after the run.")
    ] = False,
    console: Annotated[
        int | None,
        typer.Option(
            "--console", help="Also serve the web console on this loopback port (0: any)."
        ),
    ] = None,
) -> None:
    """Run a whole pipeline on this machine: controller and four services on loopback."""
    from tuneship.cli.embedded import data_dir_lock, start_embedded
    from tuneship.cli.serve import open_backend

    _quiet_libraries()
    loaded = load_env(os.environ, warn=False)
    # The run draws its own progress: only warnings and errors are logged, unless asked.
    configure_logging(
        loaded.values.log_format, loaded.values.log_level or "warning", loaded.secrets()
    )
    loaded.warn_unknown()
    settings = Settings.from_loaded(loaded.values, os.environ)
    if data_dir is not None:
        settings = Settings(
            settings.cache_dir, settings.toolchain_dir, data_dir, settings.search_path
        )
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            # Before anything is written there: the quickstart builds its files in it.
            stack.enter_context(data_dir_lock(settings.data_dir.resolve()))
            path = spec or quickstart(settings.data_dir.resolve())
            parsed = load_spec(path)
            if backend == "auto":  # no --backend: the spec's serve.backend decides
                backend = parsed.serve.backend
            chosen = open_backend(backend, ollama_url, settings, stack)
            embedded = start_embedded(settings, chosen, stack)
            stack.callback(embedded.close)
            client = PipelineClient(embedded.address)
            if console is not None:
                console_beside(embedded.address, console, stack)
            info = _resume_or_submit(client, parsed.model_dump_json())
            err.print(f"[dim]controller {embedded.address}; pipeline {info.id}[/]")
            final = follow(client, info.id, out)
            summarize(final, embedded.data_dir, out)
            if final.phase != "succeeded":
                raise typer.Exit(code=1)
            _answer(client, final, parsed)
            out.print(f"[dim]{time.monotonic() - started:.0f}s in all[/]")
            if keep_serving:
                out.print("serving; Ctrl-C stops")
                threading.Event().wait()
    except TuneshipError as exc:
        raise fail(exc) from exc


def console_beside(controller: str, port: int, stack: ExitStack) -> RunningConsole:
    """The web console on loopback in front of the embedded controller (no login: both
    are on loopback and the embedded controller takes no token), stopped by ``stack``."""
    from tuneship.console import ConsoleSettings, start_console

    def connect(token: str | None) -> PipelineClient:
        return PipelineClient(controller, token=token)

    running = start_console(ConsoleSettings(controller, host="127.0.0.1", port=port), connect)
    stack.callback(running.stop)
    err.print(f"console: {running.url}", highlight=False)
    return running


def _resume_or_submit(client: PipelineClient, spec_json: str) -> PipelineInfo:
    """Continue an unfinished pipeline of the same spec left by an interrupted run (its
    finished stages are kept, training resumes from its checkpoint); other leftovers are
    cancelled so they do not compete for this machine. Else submit a new pipeline."""
    resumed: PipelineInfo | None = None
    for phase in ("running", "pending"):
        for item in client.list(phase=phase, page_size=1000)[0]:
            same = json.loads(client.get_spec(item.id)) == json.loads(spec_json)
            if same and resumed is None:
                resumed = item
                err.print(f"[yellow]resuming {item.id}, left unfinished by an earlier run[/]")
            else:
                client.cancel(item.id)
                err.print(f"[dim]cancelled leftover {item.id} (`tuneship retry` runs it)[/]")
    return resumed or client.submit(spec_json)


def _quiet_libraries() -> None:
    """The run shows its own progress; the libraries' bars and notices would interleave."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*save_embedding_layers.*")


def _answer(client: PipelineClient, info: PipelineInfo, spec: PipelineSpec) -> None:
    prompt = spec.serve.smoke_prompts[0] if spec.serve.smoke_prompts else "Hello!"
    out.print(f"[bold]you:[/] {escape(prompt)}")
    out.print("[bold]model:[/] ", end="")
    for piece in client.chat(info.id, [{"role": "user", "content": prompt}]):
        out.print(escape(piece), end="")
    out.print()


def register(app: typer.Typer) -> None:
    """Add ``tuneship run`` to the app."""
    app.command("run")(run)
