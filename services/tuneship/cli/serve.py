"""``tuneship publish``, ``tuneship modelfile`` and ``tuneship chat``."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from tuneship.cli.connect import Connection, controller_options
from tuneship.cli.errors import fail
from tuneship.common.atomic import atomic_write_text
from tuneship.common.errors import TuneshipError
from tuneship.common.events import Event, Log, Metrics, Progress
from tuneship.common.settings import Settings

DEFAULT_OLLAMA = "http://127.0.0.1:11434"
err = Console(stderr=True)

BackendOpt = Annotated[
    str, typer.Option("--backend", help="auto (Ollama if reachable) | ollama | llama-server")
]
OllamaOpt = Annotated[
    str, typer.Option("--ollama-url", envvar="OLLAMA_HOST", help="Ollama's base URL.")
]


class ConsoleSink:
    """Prints stage events on stderr."""

    def emit(self, event: Event) -> None:
        if isinstance(event, Log):
            style = {"warning": "yellow", "error": "red"}.get(event.level, "dim")
            err.print(f"[{style}]{escape(event.message)}[/]", highlight=False)
        elif isinstance(event, Progress):
            err.print(f"[dim]{event.step}/{event.total} {escape(event.unit)}[/]")
        elif isinstance(event, Metrics):
            shown = ", ".join(f"{k}={v:.3g}" for k, v in event.values.items())
            err.print(f"[dim]{escape(shown)}[/]")


def _url(raw: str) -> str:
    return raw if "://" in raw else f"http://{raw}"


def open_backend(kind: str, ollama_url: str, settings: Settings, stack: ExitStack) -> Any:
    """The backend to use; ``auto`` picks Ollama when it answers, else llama-server."""
    from tuneship.common.toolchain import find_toolchain
    from tuneship.serving import LlamaServerBackend, OllamaBackend

    if kind in ("auto", "ollama"):
        ollama = stack.enter_context(
            OllamaBackend(_url(ollama_url), retries=0 if kind == "auto" else 3)
        )
        if kind == "ollama":
            ollama.retries = 3
            return ollama
        if ollama.health().ok:
            err.print(f"[dim]using Ollama at {ollama.base_url}[/]")
            return ollama
        err.print(f"[dim]no Ollama at {ollama.base_url}; using llama-server[/]")
    elif kind != "llama-server":
        raise TuneshipError(
            f"unknown backend {kind!r}", where="--backend", hint="auto, ollama or llama-server"
        )
    toolchain = find_toolchain(settings)
    work_dir = settings.data_dir / "serving"
    return stack.enter_context(LlamaServerBackend(toolchain, work_dir, events=ConsoleSink()))


def publish(
    gguf: Annotated[Path, typer.Argument(help="The GGUF to publish.", exists=True, dir_okay=False)],
    name: Annotated[str, typer.Option("--name", help="Model name (without tag).")],
    tag: Annotated[
        str, typer.Option(help="Version tag; default: from the GGUF's digest.")
    ] = "latest",
    backend: BackendOpt = "auto",
    ollama_url: OllamaOpt = DEFAULT_OLLAMA,
    system: Annotated[str | None, typer.Option(help="System prompt baked in.")] = None,
    template_mode: Annotated[str, typer.Option(help="auto | jinja | go")] = "auto",
    prompt: Annotated[list[str] | None, typer.Option(help="Smoke prompt (repeatable).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Smoke answers must end within this.")] = 128,
    stop: Annotated[list[str] | None, typer.Option(help="Extra stop string (repeatable).")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the result as JSON here.")] = None,
) -> None:
    """Publish a GGUF as NAME:version, smoke-test it, then point NAME:latest at it."""
    from tuneship.common.spec import ServeSpec
    from tuneship.serving import SmokeTestFailed, publish_model

    settings = Settings.from_env()
    try:
        serve = ServeSpec(
            name=name, tag=tag, system=system, template_mode=template_mode,
            parameters={"stop": stop} if stop else {}, smoke_max_tokens=max_tokens,
            **({"smoke_prompts": prompt} if prompt else {}),
        )  # fmt: skip
        with ExitStack() as stack:
            chosen = open_backend(backend, ollama_url, settings, stack)
            result = publish_model(serve, name, gguf, chosen, ConsoleSink())
    except SmokeTestFailed as exc:
        _write_report(report, exc.result.to_dict())
        raise fail(exc) from exc
    except TuneshipError as exc:
        raise fail(exc) from exc
    except ValueError as exc:  # pydantic: a bad option value
        raise fail(TuneshipError(str(exc), where="options")) from exc
    _write_report(report, result.to_dict())
    first = result.publish_to_first_token_s
    Console().print(
        f"published [bold]{result.model}[/] → {result.latest} on {result.backend} "
        f"({result.template_mode} template, stop {result.stop}); smoke test passed"
        + (f"; publish → first token {first:.2f}s" if first is not None else ""),
        highlight=False,
    )


def _write_report(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    atomic_write_text(path, json.dumps(data, indent=2))


def modelfile(
    gguf: Annotated[Path, typer.Argument(help="The GGUF.", exists=True, dir_okay=False)],
    template_mode: Annotated[
        str, typer.Option(help="go: write a TEMPLATE; jinja: let Ollama >= 0.30 use the GGUF's")
    ] = "go",
    system: Annotated[str | None, typer.Option(help="SYSTEM prompt.")] = None,
    from_path: Annotated[str | None, typer.Option("--from", help="FROM value.")] = None,
) -> None:
    """Print the Modelfile for a GGUF (usable with `ollama create NAME -f Modelfile`)."""
    from tuneship.serving import modelfile as build

    try:
        text = build(gguf, template_mode=template_mode, system=system, from_path=from_path)
    except TuneshipError as exc:
        raise fail(exc) from exc
    sys.stdout.write(text)


@controller_options
def chat(
    model: Annotated[str, typer.Argument(help="NAME or NAME:TAG.")],
    backend: BackendOpt = "auto",
    ollama_url: OllamaOpt = DEFAULT_OLLAMA,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Token limit per answer.")] = 512,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    controller: Annotated[
        str | None,
        typer.Option(
            "--controller",
            envvar="TUNESHIP_CONTROLLER",
            help="Chat through a controller; MODEL is a pipeline id.",
        ),
    ] = None,
    connection: Connection = Connection(),
) -> None:
    """Chat in the terminal: answers stream; /reset forgets, /bye (or end of input) quits."""
    from tuneship.serving import ChatSession

    options: dict[str, Any] = {"num_predict": max_tokens}
    if temperature is not None:
        options["temperature"] = temperature
    try:
        with ExitStack() as stack:
            if controller:
                from tuneship.cli.pipeline import ControllerChat

                chosen: Any = ControllerChat(connection.client(controller))
            else:
                chosen = open_backend(backend, ollama_url, Settings.from_env(), stack)
            chosen.show(model)
            _repl(ChatSession(chosen, model, system=system, options=options))
    except TuneshipError as exc:
        raise fail(exc) from exc


def _repl(session: Any) -> None:
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write(">>> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or line.strip() in ("/bye", "/exit"):
            return
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            session.reset()
            err.print("[dim]history cleared[/]")
            continue
        if not text.strip():
            continue
        for piece in session.ask(text):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        if session.last_done_reason == "length":
            err.print("[yellow](stopped at the token limit)[/]")


def register(app: typer.Typer) -> None:
    """Add the serving commands to the ``tuneship`` app."""
    app.command("publish")(publish)
    app.command("modelfile")(modelfile)
    app.command("chat")(chat)
