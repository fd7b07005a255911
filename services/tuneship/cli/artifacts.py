"""``tuneship artifacts``: list a pipeline's committed files, and download one, through
the controller (for people who cannot reach the store itself)."""

from __future__ import annotations

import difflib
import json
from pathlib import Path, PurePosixPath
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tuneship.cli.connect import Connection, controller_options
from tuneship.cli.errors import fail
from tuneship.cli.pipeline import ControllerOpt, JsonOpt
from tuneship.client import ArtifactInfo
from tuneship.common.errors import NotFound, TuneshipError
from tuneship.common.units import human_size

out = Console()


def chosen(files: list[ArtifactInfo], name: str, pipeline_id: str) -> ArtifactInfo:
    """The file called ``name`` (``stage/path``); NotFound with the closest names."""
    for found in files:
        if found.name == name:
            return found
    names = [f.name for f in files]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.75)
    raise NotFound(
        f"pipeline {pipeline_id} has no committed file {name!r}", where="--get",
        hint=(f"did you mean {', '.join(close)}? " if close else "")
        + f"`tuneship artifacts {pipeline_id}` lists its {len(names)} files",
    )  # fmt: skip


@controller_options
def artifacts(
    pipeline_id: Annotated[str, typer.Argument(help="Pipeline id.")],
    get: Annotated[
        str | None,
        typer.Option("--get", help="Download this file (stage/path, as the list names it)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where --get writes (default: its file name here)."),
    ] = None,
    controller: ControllerOpt = "127.0.0.1:50051",
    as_json: JsonOpt = False,
    connection: Connection = Connection(),
) -> None:
    """List a pipeline's committed files with their sizes, or download one (--get)."""
    try:
        client = connection.client(controller)
        files = client.artifacts(pipeline_id)
        if get is None:
            _print(files, as_json)
            return
        wanted = chosen(files, get, pipeline_id)
        dest = output if output is not None else Path(PurePosixPath(wanted.path).name)
        if dest.is_dir():
            dest = dest / PurePosixPath(wanted.path).name
        client.download(pipeline_id, wanted.stage, wanted.path, dest, wanted.output)
    except TuneshipError as exc:
        raise fail(exc) from exc
    out.print(f"wrote {dest} ({human_size(wanted.size)}, sha256 {wanted.sha256[:12]}…)",
              highlight=False)  # fmt: skip


def _print(files: list[ArtifactInfo], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([{**vars(f), "name": f.name} for f in files]))
        return
    table = Table()
    for column in ("file", "size", "sha256"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for found in files:
        table.add_row(found.name, human_size(found.size), found.sha256[:12])
    out.print(table)
    if not files:
        out.print("no committed files yet: a stage's files appear when it succeeds")


def register(app: typer.Typer) -> None:
    app.command("artifacts")(artifacts)
