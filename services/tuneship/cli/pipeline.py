"""The controller clients (submit, watch, logs, list, get, cancel, retry, delete), spec
validation and ``tuneship serve COMPONENT`` for cluster processes."""

from __future__ import annotations

import json
import os
import shlex
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneship.cli.connect import Connection, controller_options
from tuneship.cli.errors import fail, print_error
from tuneship.cli.progress import follow
from tuneship.client import PipelineClient, PipelineInfo, WatchEvent
from tuneship.common.errors import (
    FailedPrecondition,
    InvalidInput,
    TuneshipError,
    exit_code_of,
)
from tuneship.common.manifest import FileEntry
from tuneship.common.spec import PipelineSpec, load_spec
from tuneship.common.stages import COMPONENTS
from tuneship.common.store import StoreSettings, open_store
from tuneship.common.units import human_size
from tuneship.controller.inputs import (
    PIPELINE_SCHEME,
    STORE_SCHEME,
    resolve_input,
    spec_inputs,
)

out = Console()
err = Console(stderr=True)
ControllerOpt = Annotated[
    str,
    typer.Option("--controller", envvar="TUNESHIP_CONTROLLER", help="Controller host:port."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


_REFERENCES = (STORE_SCHEME, PIPELINE_SCHEME)
"""Locations the controller resolves itself: nothing to upload."""


def upload_local_inputs(
    spec: PipelineSpec, store_settings: StoreSettings | None, client: PipelineClient
) -> PipelineSpec:
    """Upload a spec's local inputs and point the spec at them (``store:KEY``).

    With ``store_settings`` (the client has ``TUNESHIP_STORE``) straight to that store,
    else through the controller (``client``): a cluster's store is rarely reachable from
    outside it. Both give the same content-addressed key, so identical inputs are
    stored once whichever way they went.
    """
    updates: dict[str, dict[str, str]] = {"model": {}, "dataset": {}}
    store = None
    for _name, kind, field, location in spec_inputs(spec):
        if location is None or "://" in location or location.startswith(_REFERENCES):
            continue
        if store_settings is not None:
            store = store or open_store(store_settings)
            key = resolve_input(store, kind, field, location).key
            err.print(f"[dim]uploaded {escape(location)} as {key}[/]", soft_wrap=True)
        else:
            key = _upload_through_controller(client, Path(location), kind, field)
        section, name = field.split(".")
        updates[section][name] = STORE_SCHEME + key
    return spec.model_copy(
        update={
            "model": spec.model.model_copy(update=updates["model"]),
            "dataset": spec.dataset.model_copy(update=updates["dataset"]),
        }
    )


def _upload_through_controller(client: PipelineClient, path: Path, kind: str, field: str) -> str:
    """Upload one local input through the controller, a progress line per file; returns
    its manifest key. A refusal says which ``tuneship store put`` to run instead."""
    if not path.exists():
        raise InvalidInput(f"{path} does not exist", where=field, hint="check the path")

    def started(index: int, count: int, entry: FileEntry) -> None:
        err.print(f"[dim]{field}: uploading {escape(entry.name)} ({human_size(entry.size)}) "
                  f"[{index}/{count}][/]", highlight=False, soft_wrap=True)  # fmt: skip

    err.print(f"[dim]{field}: hashing {escape(str(path))}[/]", highlight=False, soft_wrap=True)
    try:
        uploaded = client.upload_input(path, kind, field, on_file=started)
    except (InvalidInput, FailedPrecondition) as exc:
        put = f"tuneship store put {shlex.quote(str(path))} --kind {kind}"
        reason = exc.message.splitlines()[0].removeprefix(f"{field}: ")  # the server's hint
        raise type(exc)(
            f"the controller did not take {path}: {reason}", where=field,
            hint=f"upload it to the cluster's store yourself: `{put}` with TUNESHIP_STORE "
            f"(and TUNESHIP_S3_*) pointing at that store, then set {field}: store:<the key "
            "it prints>; or submit with TUNESHIP_STORE set, which uploads straight to it",
        ) from exc  # fmt: skip
    if uploaded.already_stored:
        err.print(f"[dim]{escape(str(path))} is already in the store as {uploaded.key}[/]",
                  highlight=False, soft_wrap=True)  # fmt: skip
    else:
        err.print(f"[dim]uploaded {escape(str(path))} through the controller as "
                  f"{uploaded.key}[/]", highlight=False, soft_wrap=True)  # fmt: skip
    return uploaded.key


@controller_options
def submit(
    specs: Annotated[list[Path], typer.Argument(help="One or more spec files (a batch).")],
    controller: ControllerOpt = "127.0.0.1:50051",
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    watch: Annotated[bool, typer.Option(help="Follow the pipeline until it ends.")] = False,
    as_json: JsonOpt = False,
    connection: Connection = Connection(),
) -> None:
    """Submit pipelines to a controller. Local inputs are uploaded first: to the store
    TUNESHIP_STORE names, or else through the controller."""
    try:
        client = connection.client(controller)
        # Only a store the user configured: the default local one is not the cluster's.
        direct = StoreSettings.from_env() if os.environ.get("TUNESHIP_STORE") else None
        texts = [upload_local_inputs(load_spec(p), direct, client).model_dump_json()
                 for p in specs]  # fmt: skip
        created = client.submit_batch(texts, priority) if len(texts) > 1 else [
            client.submit(texts[0], priority)]  # fmt: skip
        for info in created:  # plain lines: scripts read them
            typer.echo(json.dumps(info.as_dict()) if as_json else f"{info.id}\t{info.phase}")
        if watch and len(created) == 1:
            final = follow(client, created[0].id, err)
            raise typer.Exit(code=0 if final.phase == "succeeded" else 1)
    except TuneshipError as exc:
        raise fail(exc) from exc


@controller_options
def watch_cmd(
    pipeline_id: Annotated[str, typer.Argument(help="Pipeline id.")],
    controller: ControllerOpt = "127.0.0.1:50051",
    connection: Connection = Connection(),
) -> None:
    """Follow a pipeline (joining late replays what happened so far)."""
    try:
        client = connection.client(controller)
        final = follow(client, pipeline_id, out)
    except TuneshipError as exc:
        raise fail(exc) from exc
    out.print(f"{final.id}: {final.phase} {final.error}")
    raise typer.Exit(code=0 if final.phase == "succeeded" else 1)


@controller_options
def logs(
    pipeline_id: Annotated[str, typer.Argument(help="Pipeline id.")],
    controller: ControllerOpt = "127.0.0.1:50051",
    as_json: JsonOpt = False,
    connection: Connection = Connection(),
) -> None:
    """Print a pipeline's events so far (transitions, logs, metrics)."""
    try:
        client = connection.client(controller)
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
        raise fail(exc) from exc


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


@controller_options
def list_cmd(
    controller: ControllerOpt = "127.0.0.1:50051",
    phase: Annotated[str, typer.Option(help="pending|running|succeeded|failed|cancelled")] = "",
    name: Annotated[str, typer.Option(help="Name prefix.")] = "",
    limit: Annotated[int, typer.Option(help="Page size.")] = 50,
    page: Annotated[str, typer.Option(help="Page token from a previous listing.")] = "",
    as_json: JsonOpt = False,
    connection: Connection = Connection(),
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
        items, next_page = connection.client(controller).list(phase, name, limit, page)
    except TuneshipError as exc:
        raise fail(exc) from exc
    if as_json:
        typer.echo(json.dumps({"pipelines": [i.as_dict() for i in items], "next_page": next_page}))
        return
    table = Table()
    for column in ("id", "phase", "stage", "updated", "error"):
        table.add_column(column)
    for item in items:
        current = next(
            (f"{s.name} ({s.shown_phase})" if s.waiting else s.name
             for s in item.stages if s.phase != "succeeded"), "-",
        )  # fmt: skip
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item.updated))
        table.add_row(item.id, item.phase, current, updated, item.error[:60])
    out.print(table)
    if next_page:
        out.print(f"more: --page {next_page}")


def _one(
    action: str, pipeline_id: str, controller: str, as_json: bool, connection: Connection
) -> None:
    try:
        client = connection.client(controller)
        info = getattr(client, action)(pipeline_id)
    except TuneshipError as exc:
        raise fail(exc) from exc
    if action == "delete":
        out.print(f"deleted {pipeline_id}")
        return
    if as_json:
        typer.echo(json.dumps(info.as_dict()))
        return
    out.print(f"{info.id}: {info.phase} {info.error}")
    for stage in info.stages:
        detail = stage.error or stage.waiting or ", ".join(stage.outputs.values())
        out.print(
            f"  {stage.name:<8} {stage.shown_phase:<10} attempts={stage.attempts} {escape(detail)}"
        )


@controller_options
def get(
    pipeline_id: str,
    controller: ControllerOpt = "127.0.0.1:50051",
    as_json: JsonOpt = False,
    connection: Connection = Connection(),
) -> None:
    """Show a pipeline and its stages."""
    _one("get", pipeline_id, controller, as_json, connection)


@controller_options
def cancel(
    pipeline_id: str,
    controller: ControllerOpt = "127.0.0.1:50051",
    as_json: JsonOpt = False,
    connection: Connection = Connection(),
) -> None:
    """Cancel a pipeline; its running stage is stopped on the worker."""
    _one("cancel", pipeline_id, controller, as_json, connection)


@controller_options
def retry(
    pipeline_id: str,
    controller: ControllerOpt = "127.0.0.1:50051",
    as_json: JsonOpt = False,
    connection: Connection = Connection(),
) -> None:
    """Run a failed or cancelled pipeline again from the stage that did not finish."""
    _one("retry", pipeline_id, controller, as_json, connection)


@controller_options
def delete(
    pipeline_id: str,
    controller: ControllerOpt = "127.0.0.1:50051",
    connection: Connection = Connection(),
) -> None:
    """Forget a finished pipeline."""
    _one("delete", pipeline_id, controller, False, connection)


def serve(
    component: Annotated[
        str, typer.Argument(help=" | ".join(("controller", *COMPONENTS, "console")))
    ],
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default 50051; the console 8080).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "0.0.0.0",
    once: Annotated[
        bool,
        typer.Option("--once", help="Serve only the task TUNESHIP_TASK_ID, then exit (a Job pod)."),
    ] = False,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="Serve beyond loopback without tokens, on purpose."),
    ] = False,
    print_config: Annotated[
        bool,
        typer.Option("--print-config", help="Print the settings it would run with, then exit."),
    ] = False,
    controller: Annotated[
        str,
        typer.Option("--controller", envvar="TUNESHIP_CONTROLLER",
                     help="console: the controller it shows (host:port or https://host)."),
    ] = "127.0.0.1:50051",
    secure_cookie: Annotated[
        bool,
        typer.Option("--secure-cookie",
                     help="console: mark its session cookie Secure (reached over HTTPS)."),
    ] = False,
) -> None:  # fmt: skip
    """Run one tuneship component as a gRPC server (what the images start), or the web
    console (docs/console.md). Beyond loopback a component needs tokens
    (TUNESHIP_API_TOKENS for the controller, TUNESHIP_WORKER_TOKEN for a stage service)
    or --insecure, and the console asks for a login; docs/security.md."""
    from tuneship.cli.daemon import print_config as config_of
    from tuneship.cli.daemon import serve_component

    try:
        if component == "console":
            from tuneship.cli.console import console_settings, serve_console

            settings = console_settings(controller, host, port, secure_cookie)
            if print_config:
                typer.echo("\n".join(f"{k}={v}" for k, v in vars(settings).items()))
                raise typer.Exit(code=0)
            raise typer.Exit(code=serve_console(settings, dict(os.environ)))
        if print_config:
            typer.echo("\n".join(config_of(component, dict(os.environ))))
            raise typer.Exit(code=0)
        code = serve_component(
            component, host, 50051 if port is None else port, dict(os.environ),
            once=once, insecure=insecure,
        )  # fmt: skip
    except TuneshipError as exc:
        # A Job pod that cannot even start says whether a retry could help (exit 3: no).
        raise fail(exc, exit_code_of(exc) if once else 2) from exc
    raise typer.Exit(code=code)


def validate(
    specs: Annotated[list[Path], typer.Argument(help="Spec files to check.")],
) -> None:
    """Check specs without running anything: every problem with file:line and field
    path, then the inputs it can reach (local model directory and datasets)."""
    from tuneship.cli.validate import check_inputs

    failed = False
    for path in specs:
        try:
            spec = load_spec(path)
        except TuneshipError as exc:
            print_error(exc, label=str(path))
            failed = True
            continue
        problems, unchecked = check_inputs(spec)
        for problem in problems:
            print_error(problem, label=str(path))
        failed = failed or bool(problems)
        if not problems:
            out.print(f"{path}: ok ({spec.metadata.name}, {spec.train.method}, "
                      f"{', '.join(spec.export.quant_types)})")  # fmt: skip
        for what in unchecked:
            out.print(f"  not checked from here: {escape(what)} (the controller resolves it)")
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
