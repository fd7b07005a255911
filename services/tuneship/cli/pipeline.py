"""``tuneship run`` (all-in-one) and the controller clients: submit, watch, list, get,
logs, cancel, retry, delete; ``tuneship serve COMPONENT`` for cluster processes."""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tuneship.client import PipelineClient, PipelineInfo, WatchEvent
from tuneship.common.errors import InvalidInput, TuneshipError
from tuneship.common.settings import Settings
from tuneship.common.spec import PipelineSpec, load_spec
from tuneship.common.store import StoreSettings, open_store
from tuneship.controller.inputs import STORE_SCHEME, resolve_input, spec_inputs

out = Console()
err = Console(stderr=True)
ControllerOpt = Annotated[
    str,
    typer.Option("--controller", envvar="TUNESHIP_CONTROLLER", help="Controller host:port."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _fail(error: TuneshipError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(error.render())}", highlight=False)
    return typer.Exit(code=2)


class StageBars:
    """One progress bar per stage, fed by Watch events; log lines printed above."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.fields[stage]:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[str, Any] = {}

    def show(self, event: WatchEvent) -> None:
        console = self.progress.console
        if event.kind == "progress" and event.data.get("unit") == "bytes":
            if event.stage in self.tasks:  # store transfers: a note, not the stage's bar
                self.progress.update(
                    self.tasks[event.stage], note=event.data.get("message", "")[:40]
                )
        elif event.kind == "progress" and event.stage:
            task = self.tasks.get(event.stage)
            total = event.data["total"] or None
            if task is None:
                task = self.progress.add_task("", total=total, stage=event.stage, note="")
                self.tasks[event.stage] = task
            note = event.data.get("message") or event.data.get("unit", "")
            self.progress.update(task, completed=event.data["step"], total=total, note=note[:40])
        elif event.kind == "metrics" and event.stage in self.tasks:
            loss = event.data.get("loss")
            if loss is not None:
                note = f"loss {loss:.3f}  {event.data.get('tokens_per_s', 0):.0f} tok/s"
                self.progress.update(self.tasks[event.stage], note=note)
        elif event.kind == "log":
            level = event.data.get("level", "info")
            if level != "info":
                style = "yellow" if level == "warning" else "red"
                console.print(f"[{style}]{event.stage}: {escape(event.text)}[/]")
        elif event.kind == "transition" and event.text:
            console.print(f"[cyan]•[/] {escape(event.text)}")


def follow(client: PipelineClient, pipeline_id: str, console: Console) -> PipelineInfo:
    """Render a pipeline's events until it ends; return its final state."""
    bars = StageBars(console)
    with bars.progress:
        for event in client.watch(pipeline_id):
            bars.show(event)
    return client.get(pipeline_id)


def quickstart(data_dir: Path) -> Path:
    """Build the quickstart's tiny model and data (once) and return its spec path."""
    from tuneship.testing.conversations import write_sample_datasets
    from tuneship.testing.fixtures import build_fixture

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
) -> None:
    """Run a whole pipeline on this machine: controller and four services on loopback."""
    from tuneship.cli.embedded import start_embedded
    from tuneship.cli.serve import open_backend

    _quiet_libraries()
    settings = Settings.from_env()
    if data_dir is not None:
        settings = Settings(
            settings.cache_dir, settings.toolchain_dir, data_dir, settings.search_path
        )
    started = time.monotonic()
    try:
        path = spec or quickstart(settings.data_dir.resolve())
        parsed = load_spec(path)
        if backend == "auto":  # no --backend: the spec's serve.backend decides
            backend = parsed.serve.backend
        with ExitStack() as stack:
            chosen = open_backend(backend, ollama_url, settings, stack)
            embedded = start_embedded(settings, chosen, stack)
            stack.callback(embedded.close)
            client = PipelineClient(embedded.address)
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
        raise _fail(exc) from exc


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


def upload_local_inputs(spec: PipelineSpec, store_settings: StoreSettings) -> PipelineSpec:
    """Upload a spec's local inputs to the store and point the spec at them (store:KEY)."""
    updates: dict[str, dict[str, str]] = {"model": {}, "dataset": {}}
    store = None
    for _name, kind, field, location in spec_inputs(spec):
        if location is None or "://" in location or location.startswith(STORE_SCHEME):
            continue
        store = store or open_store(store_settings)
        artifact = resolve_input(store, kind, field, location)
        err.print(f"[dim]uploaded {location} as {artifact.key}[/]")
        section, key = field.split(".")
        updates[section][key] = STORE_SCHEME + artifact.key
    return spec.model_copy(
        update={
            "model": spec.model.model_copy(update=updates["model"]),
            "dataset": spec.dataset.model_copy(update=updates["dataset"]),
        }
    )


def submit(
    specs: Annotated[list[Path], typer.Argument(help="One or more spec files (a batch).")],
    controller: ControllerOpt = "127.0.0.1:50051",
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    watch: Annotated[bool, typer.Option(help="Follow the pipeline until it ends.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Submit pipelines to a controller (local inputs are uploaded to the store first)."""
    try:
        store_settings = StoreSettings.from_env()
        texts = [upload_local_inputs(load_spec(p), store_settings).model_dump_json() for p in specs]
        client = PipelineClient(controller)
        created = client.submit_batch(texts, priority) if len(texts) > 1 else [
            client.submit(texts[0], priority)]  # fmt: skip
        for info in created:  # plain lines: scripts read them
            typer.echo(json.dumps(info.as_dict()) if as_json else f"{info.id}\t{info.phase}")
        if watch and len(created) == 1:
            final = follow(client, created[0].id, err)
            raise typer.Exit(code=0 if final.phase == "succeeded" else 1)
    except TuneshipError as exc:
        raise _fail(exc) from exc


def watch_cmd(
    pipeline_id: Annotated[str, typer.Argument(help="Pipeline id.")],
    controller: ControllerOpt = "127.0.0.1:50051",
) -> None:
    """Follow a pipeline (joining late replays what happened so far)."""
    try:
        client = PipelineClient(controller)
        final = follow(client, pipeline_id, out)
    except TuneshipError as exc:
        raise _fail(exc) from exc
    out.print(f"{final.id}: {final.phase} {final.error}")
    raise typer.Exit(code=0 if final.phase == "succeeded" else 1)


def logs(
    pipeline_id: Annotated[str, typer.Argument(help="Pipeline id.")],
    controller: ControllerOpt = "127.0.0.1:50051",
    as_json: JsonOpt = False,
) -> None:
    """Print a pipeline's events so far (transitions, logs, metrics)."""
    try:
        client = PipelineClient(controller)
        info = client.get(pipeline_id)
        done = info.phase in ("succeeded", "failed", "cancelled")
        events = client.watch(pipeline_id) if done else _until_now(client, pipeline_id)
        for event in events:
            if event.kind == "progress":
                continue
            if as_json:
                typer.echo(json.dumps(vars(event)))
            else:
                out.print(
                    f"{event.seq:>5} {event.stage or '-':<8} {escape(event.text)}", highlight=False
                )
    except TuneshipError as exc:
        raise _fail(exc) from exc


def _until_now(client: PipelineClient, pipeline_id: str) -> list[WatchEvent]:
    """The events recorded so far of a running pipeline (stops following after a pause)."""
    collected: list[WatchEvent] = []
    done = threading.Event()

    def reader() -> None:
        for event in client.watch(pipeline_id):
            collected.append(event)
            if done.is_set():
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(2.0)
    done.set()
    return list(collected)


def list_cmd(
    controller: ControllerOpt = "127.0.0.1:50051",
    phase: Annotated[str, typer.Option(help="pending|running|succeeded|failed|cancelled")] = "",
    name: Annotated[str, typer.Option(help="Name prefix.")] = "",
    limit: Annotated[int, typer.Option(help="Page size.")] = 50,
    page: Annotated[str, typer.Option(help="Page token from a previous listing.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """List pipelines, newest first."""
    try:
        if phase and phase.upper() not in (
            "PENDING",
            "RUNNING",
            "SUCCEEDED",
            "FAILED",
            "CANCELLED",
        ):
            raise InvalidInput(f"unknown phase {phase!r}", where="--phase",
                               hint="pending, running, succeeded, failed or cancelled")  # fmt: skip
        items, next_page = PipelineClient(controller).list(phase, name, limit, page)
    except TuneshipError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps({"pipelines": [i.as_dict() for i in items], "next_page": next_page}))
        return
    table = Table()
    for column in ("id", "phase", "stage", "updated", "error"):
        table.add_column(column)
    for item in items:
        current = next((s.name for s in item.stages if s.phase != "succeeded"), "-")
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item.updated))
        table.add_row(item.id, item.phase, current, updated, item.error[:60])
    out.print(table)
    if next_page:
        out.print(f"more: --page {next_page}")


def _one(action: str, pipeline_id: str, controller: str, as_json: bool) -> None:
    try:
        client = PipelineClient(controller)
        info = getattr(client, action)(pipeline_id)
    except TuneshipError as exc:
        raise _fail(exc) from exc
    if action == "delete":
        out.print(f"deleted {pipeline_id}")
        return
    if as_json:
        typer.echo(json.dumps(info.as_dict()))
        return
    out.print(f"{info.id}: {info.phase} {info.error}")
    for stage in info.stages:
        detail = stage.error or ", ".join(stage.outputs.values())
        out.print(f"  {stage.name:<8} {stage.phase:<10} attempts={stage.attempts} {escape(detail)}")


def get(
    pipeline_id: str, controller: ControllerOpt = "127.0.0.1:50051", as_json: JsonOpt = False
) -> None:
    """Show a pipeline and its stages."""
    _one("get", pipeline_id, controller, as_json)


def cancel(
    pipeline_id: str, controller: ControllerOpt = "127.0.0.1:50051", as_json: JsonOpt = False
) -> None:
    """Cancel a pipeline; its running stage is stopped on the worker."""
    _one("cancel", pipeline_id, controller, as_json)


def retry(
    pipeline_id: str, controller: ControllerOpt = "127.0.0.1:50051", as_json: JsonOpt = False
) -> None:
    """Run a failed or cancelled pipeline again from the stage that did not finish."""
    _one("retry", pipeline_id, controller, as_json)


def delete(pipeline_id: str, controller: ControllerOpt = "127.0.0.1:50051") -> None:
    """Forget a finished pipeline."""
    _one("delete", pipeline_id, controller, False)


def serve(
    component: Annotated[
        str, typer.Argument(help="controller | trainer | merger | converter | serving")
    ],
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 50051,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "0.0.0.0",
) -> None:
    """Run one tuneship component as a long-lived gRPC server (what the images start)."""
    from tuneship.cli.daemon import serve_component

    try:
        serve_component(component, host, port, dict(os.environ))
    except TuneshipError as exc:
        raise _fail(exc) from exc


def validate(
    specs: Annotated[list[Path], typer.Argument(help="Spec files to check.")],
) -> None:
    """Check specs without running anything: every problem with file:line and field path."""
    failed = False
    for path in specs:
        try:
            spec = load_spec(path)
        except TuneshipError as exc:
            err.print(f"[bold red]{escape(str(path))}:[/] {escape(exc.render())}", highlight=False)
            failed = True
        else:
            out.print(f"{path}: ok ({spec.metadata.name}, {spec.train.method}, "
                      f"{', '.join(spec.export.quant_types)})")  # fmt: skip
    raise typer.Exit(code=2 if failed else 0)


class ControllerChat:
    """The chat part of a serving backend, through a controller: the model a pipeline
    published, named by the pipeline's id (``tuneship chat ID --controller ADDR``)."""

    kind = "controller"

    def __init__(self, client: PipelineClient) -> None:
        self.client = client

    def show(self, name: str) -> PipelineInfo:
        return self.client.get(name)

    def chat(self, name: str, messages: list[dict[str, str]], **options: float) -> Any:
        from tuneship.serving.backend import ChatStream

        return ChatStream(self.client.chat_pieces(name, messages, **options))


def register(app: typer.Typer) -> None:
    """Add the pipeline commands to the ``tuneship`` app."""
    app.command("run")(run)
    app.command("validate")(validate)
    app.command("submit")(submit)
    app.command("watch")(watch_cmd)
    app.command("logs")(logs)
    app.command("list")(list_cmd)
    app.command("get")(get)
    app.command("cancel")(cancel)
    app.command("retry")(retry)
    app.command("delete")(delete)
    app.command("serve")(serve)
