"""Turning a spec's model and dataset locations into committed store inputs.

- ``store:<manifest key>``: already in the store (what ``tuneship submit`` sends after
  uploading local files, or ``tuneship store put`` printed).
- ``s3://bucket/prefix``: objects already in the store's bucket (e.g. a model copied
  into MinIO), committed as an input.
- ``hf://org/name``: downloaded from the Hugging Face hub (clusters with network),
  committed as an input.
- a local path: uploaded (content-addressed, so the same files are stored once). Only a
  controller that shares a filesystem with the user (embedded mode) sees local paths;
  clients of a cluster upload first.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from tuneship.common.errors import FailedPrecondition, InvalidInput, Unavailable
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


def resolve_input(
    store: ArtifactStore, kind: str, field: str, location: str, revision: str | None = None
) -> Artifact:
    """Commit (or find) one input and return its manifest reference."""
    if location.startswith(STORE_SCHEME):
        manifest = read_manifest(store, location[len(STORE_SCHEME) :])
        return Artifact(manifest.key, manifest.digest, manifest.total_size)
    if location.startswith("s3://"):
        with tempfile.TemporaryDirectory() as temp:
            return resolve_input(
                store, kind, field, str(_from_bucket(store, location, field, Path(temp)))
            )
    if location.startswith("hf://"):
        with tempfile.TemporaryDirectory() as temp:
            return resolve_input(
                store, kind, field, str(_from_hub(location, revision, field, Path(temp)))
            )
    if "://" in location:
        raise InvalidInput(
            f"unsupported location {location!r}", where=field,
            hint="a local path, store:<manifest key>, s3://bucket/prefix or hf://org/name",
        )  # fmt: skip
    path = Path(location)
    if not path.exists():
        raise InvalidInput(f"{path} does not exist", where=field, hint="check the path")
    manifest = upload_input(store, path, kind=kind)
    return Artifact(manifest.key, manifest.digest, manifest.total_size)


def _from_bucket(store: ArtifactStore, location: str, field: str, dest: Path) -> Path:
    """Copy ``s3://bucket/prefix`` out of the store's own bucket into ``dest``."""
    bucket, _, path = location[len("s3://") :].partition("/")
    own_bucket, own_prefix = getattr(store, "bucket", None), getattr(store, "prefix", "")
    if bucket != own_bucket or not path.startswith(own_prefix):
        raise FailedPrecondition(
            f"{location} is outside the artifact store ({store.describe()})", where=field,
            hint="copy it into the store's bucket, or upload it with `tuneship store put`",
        )  # fmt: skip
    key = path[len(own_prefix) :].rstrip("/")
    objects = store.list(key + "/")
    if not objects:  # one object: a dataset file (NotFound when there is none)
        target = dest / Path(key).name
        store.get_file(key, target)
        return target
    for info in objects:
        store.get_file(info.key, dest / info.key[len(key) + 1 :])
    return dest


def _from_hub(location: str, revision: str | None, field: str, dest: Path) -> Path:
    """Download ``hf://org/name`` (safetensors, config and tokenizer files) into ``dest``."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(
            location[len("hf://") :], revision=revision, local_dir=dest,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"],
        ))  # fmt: skip
    except Exception as exc:
        raise Unavailable(
            f"cannot download {location} from the Hugging Face hub: {exc}",
            where=field,
            hint="this needs network access; else copy the model into the store",
        ) from exc


def input_uploader(store: ArtifactStore) -> Callable[[PipelineSpec], dict[str, Artifact]]:
    """The controller's ``InputUploader`` over ``store``."""

    def upload(spec: PipelineSpec) -> dict[str, Artifact]:
        return {
            name: resolve_input(store, kind, field, location, spec.model.revision)
            for name, kind, field, location in spec_inputs(spec)
            if location is not None
        }

    return upload
