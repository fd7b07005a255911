"""The ``tuneship`` command: the composition root that wires settings into the stages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tuneship.cli import artifacts as artifacts_cmd
from tuneship.cli import doctor as doctor_cmd
from tuneship.cli import export as export_cmd
from tuneship.cli import pipeline as pipeline_cmd
from tuneship.cli import run as run_cmd
from tuneship.cli import serve as serve_cmd
from tuneship.cli import store as store_cmd
from tuneship.cli import train as train_cmd
from tuneship.cli.errors import fail, print_error
from tuneship.common.errors import TuneshipError
from tuneship.common.settings import Settings

app = typer.Typer(
    name="tuneship",
    help="Turn multi-turn conversations into a fine-tuned, quantized, served chat model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
fixtures_app = typer.Typer(help="Offline test fixtures: tiny models and sample conversations.")
app.add_typer(fixtures_app, name="fixtures")
serve_cmd.register(app)
store_cmd.register(app)
train_cmd.register(app)
export_cmd.register(app)
run_cmd.register(app)
pipeline_cmd.register(app)
artifacts_cmd.register(app)


@app.command()
def doctor(
    path: Annotated[Path | None, typer.Argument(help="A model directory or GGUF to check.")] = None,
    toolchain: Annotated[
        bool, typer.Option("--toolchain", help="Check the llama.cpp toolchain.")
    ] = False,
    fix: Annotated[bool, typer.Option("--fix", help="Repair an HF model dir when safe.")] = False,
) -> None:
    """Check the llama.cpp toolchain (--toolchain) or a model (PATH)."""
    settings = Settings.from_env()
    if path is None and not toolchain:
        toolchain = True
    if toolchain:
        raise typer.Exit(code=doctor_cmd.toolchain_report(settings, Console()))
    assert path is not None
    try:
        code = doctor_cmd.model_report(path, Console(), fix=fix)
    except TuneshipError as exc:
        raise fail(exc) from exc
    raise typer.Exit(code=code)


@fixtures_app.command("build")
def fixtures_build(
    name: Annotated[str, typer.Argument(help="tiny-llama2 | tiny-chatml | datasets")],
    out: Annotated[Path, typer.Argument(help="Output directory (replaced).")],
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives identical files.")] = 0,
) -> None:
    """Build an offline fixture (no network, a few seconds)."""
    from tuneship.quickstart.conversations import write_sample_datasets
    from tuneship.quickstart.tiny_models import build_fixture

    try:
        if name == "datasets":
            write_sample_datasets(out, seed)
        else:
            build_fixture(name, out, seed)
    except ValueError as exc:
        raise fail(TuneshipError(str(exc), where="NAME")) from exc
    Console().print(f"built {name} (seed {seed}) in {out}")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except TuneshipError as exc:  # e.g. a bad TUNESHIP_* variable, read before any try
        print_error(exc)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
