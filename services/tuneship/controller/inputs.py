"""Turning a spec's model and dataset locations into committed store inputs.

- ``store:<manifest key>``: already in the store (what ``tuneship submit`` sends after
  uploading local files, or ``tuneship store put`` printed).
- a local path: uploaded (content-addressed, so the same files are stored once). Only a
  controller that shares a filesystem with the user (embedded mode) sees local paths;
  clients of a cluster upload first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tuneship.common.errors import FailedPrecondition, InvalidInput
from tuneship.common.jobs import Artifact
from tuneship.common.spec import PipelineSpec
from tuneship.common.store import ArtifactStore
from tuneship.common.store.commit import read_manifest, upload_input

STORE_SCHEME = "store:"


def spec_inputs(spec: PipelineSpec) -> list[tuple[str, str, str, str | None]]:
    """(input name, input kind, spec field path, location) for each input of a spec."""
    return [
        ("base", "model", "model.base", spec.model.base),
        ("train", "dataset", "dataset.train", spec.dataset.train),
        ("eval", "dataset", "dataset.eval", spec.dataset.eval),
    ]


def resolve_input(store: ArtifactStore, kind: str, field: str, location: str) -> Artifact:
    """Commit (or find) one input and return its manifest reference."""
    if location.startswith(STORE_SCHEME):
        manifest = read_manifest(store, location[len(STORE_SCHEME) :])
        return Artifact(manifest.key, manifest.digest, manifest.total_size)
    if "://" in location:
        scheme = location.split("://", 1)[0]
        raise FailedPrecondition(
            f"{scheme}:// inputs are not fetched by this controller",
            where=field,
            hint="upload it first (`tuneship store put PATH --kind ...`) and use store:<key>",
        )
    path = Path(location)
    if not path.exists():
        raise InvalidInput(f"{path} does not exist", where=field, hint="check the path")
    manifest = upload_input(store, path, kind=kind)
    return Artifact(manifest.key, manifest.digest, manifest.total_size)


def input_uploader(store: ArtifactStore) -> Callable[[PipelineSpec], dict[str, Artifact]]:
    """The controller's ``InputUploader`` over ``store``."""

    def upload(spec: PipelineSpec) -> dict[str, Artifact]:
        return {
            name: resolve_input(store, kind, field, location)
            for name, kind, field, location in spec_inputs(spec)
            if location is not None
        }

    return upload
