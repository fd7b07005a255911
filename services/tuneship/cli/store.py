"""``tuneship store``: look inside the artifact store, verify and fetch committed artifacts.

The store is the one ``TUNESHIP_STORE`` names (default: ``<data dir>/store``, the one
``tuneship run`` uses).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tuneship.cli.errors import fail
from tuneship.common.errors import TuneshipError
from tuneship.common.manifest import Manifest
from tuneship.common.settings import Settings
from tuneship.common.store import ArtifactStore, StoreSettings, local_store_url, open_store
from tuneship.common.store.commit import fetch_stage, upload_input, verify_committed

store_app = typer.Typer(help="Inspect, verify and fetch artifacts in the store.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def register(app: typer.Typer) -> None:
    app.add_typer(store_app, name="store")


def _store() -> ArtifactStore:
    settings = Settings.from_env()
    return open_store(StoreSettings.from_env(default_url=local_store_url(settings.data_dir)))


def _summary(manifest: Manifest) -> dict[str, object]:
    return {
        "key": manifest.key,
        "sha256": manifest.digest,
        "kind": manifest.kind,
        "root": manifest.root,
        "files": [asdict(f) for f in manifest.files],
        "total_size": manifest.total_size,
        "labels": dict(manifest.labels),
    }


def _print_manifest(manifest: Manifest, verb: str) -> None:
    console = Console(soft_wrap=True)
    console.print(
        f"{verb} {manifest.key} ({len(manifest.files)} files, {manifest.total_size} bytes)"
    )
    for entry in manifest.files:
        console.print(f"  {entry.sha256[:12]}  {entry.size:>12}  {entry.name}", highlight=False)


@store_app.command("ls")
def ls(
    prefix: Annotated[
        str, typer.Argument(help="Key prefix ending in '/', e.g. pipelines/p1/")
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    """List stored objects under PREFIX."""
    try:
        store = _store()
        found = store.list(prefix)
    except TuneshipError as error:
        raise fail(error) from error
    if as_json:
        print(json.dumps([asdict(o) for o in found], indent=2))
        return
    table = Table(title=store.describe())
    table.add_column("size", justify="right")
    table.add_column("key", overflow="fold")
    for info in found:
        table.add_row(str(info.size), info.key)
    Console().print(table)


@store_app.command("verify")
def verify(
    manifest_key: Annotated[str, typer.Argument(help="Key of a committed manifest.json.")],
    deep: Annotated[bool, typer.Option("--deep", help="Download and re-hash every file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check that every file of a committed artifact is stored as its manifest says."""
    try:
        manifest = verify_committed(_store(), manifest_key, deep=deep)
    except TuneshipError as error:
        raise fail(error) from error
    if as_json:
        print(json.dumps({**_summary(manifest), "verified": "deep" if deep else "sizes"}))
    else:
        _print_manifest(manifest, "verified" + (" (re-hashed)" if deep else ""))


@store_app.command("fetch")
def fetch(
    manifest_key: Annotated[str, typer.Argument(help="Key of a committed manifest.json.")],
    dest: Annotated[Path, typer.Argument(help="Directory to create (replaced if present).")],
    as_json: JsonOpt = False,
) -> None:
    """Download a committed artifact, every file checked against its sha256."""
    try:
        manifest = fetch_stage(_store(), manifest_key, dest)
    except TuneshipError as error:
        raise fail(error) from error
    if as_json:
        print(json.dumps({**_summary(manifest), "dest": str(dest)}))
    else:
        _print_manifest(manifest, f"fetched into {dest}:")


@store_app.command("put")
def put(
    path: Annotated[Path, typer.Argument(help="A base model directory or a dataset file.")],
    kind: Annotated[str, typer.Option(help="Input kind: model, dataset, ...")] = "dataset",
    as_json: JsonOpt = False,
) -> None:
    """Upload a pipeline input (content-addressed: the same files are stored once)."""
    try:
        manifest = upload_input(_store(), path, kind=kind)
    except TuneshipError as error:
        raise fail(error) from error
    if as_json:
        print(json.dumps(_summary(manifest)))
    else:
        _print_manifest(manifest, "stored as")
