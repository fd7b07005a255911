"""Turning a spec's model and dataset locations into committed store inputs.

- ``store:<manifest key>``: already in the store (what ``tuneship submit`` sends after
  uploading local files, or ``tuneship store put`` printed).
- ``s3://bucket/prefix``: objects already in the store's bucket (e.g. a model copied
  into MinIO), committed as an input.
- ``hf://org/name`` (a model) and ``hf://datasets/org/name[@revision]`` (a dataset):
  downloaded from the Hugging Face hub (clusters with network), committed as an input;
  a dataset with a file naming the commit its revision resolved to.
- ``pipeline:<id>`` (``model.base`` only): the merged model of another pipeline of this
  controller, e.g. an SFT result to preference-tune. It is copied into the inputs as
  any model would be, so deleting that pipeline later takes nothing from this one.
- a local path: uploaded (content-addressed, so the same files are stored once). Only a
  controller that shares a filesystem with the user (embedded mode) sees local paths;
  clients of a cluster upload first: straight to the store, or through the controller
  (``StoreInputs.receive``, the ``UploadInput`` RPC) when they cannot reach the store.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tuneship.common import layout
from tuneship.common.datasources import HUB_PREFIX, copy_hub_dataset
from tuneship.common.errors import FailedPrecondition, InvalidInput, NotFound, Unavailable
from tuneship.common.jobs import Artifact
from tuneship.common.manifest import FileEntry, Manifest, now
from tuneship.common.spec import PipelineSpec
from tuneship.common.store import ArtifactStore, CorruptArtifact
from tuneship.common.store.commit import (
    fetch_stage,
    input_digest,
    read_manifest,
    upload_input,
    verify_committed,
    write_manifest,
)
from tuneship.common.units import GiB, human_size

STORE_SCHEME = "store:"
PIPELINE_SCHEME = "pipeline:"


def spec_inputs(spec: PipelineSpec) -> list[tuple[str, str, str, str | None]]:
    """(input name, input kind, spec field path, location) for each input of a spec."""
    return [
        ("base", "model", "model.base", spec.model.base),
        ("train", "dataset", "dataset.train", spec.dataset.train),
        ("eval", "dataset", "dataset.eval", spec.dataset.eval),
    ]


MergedModels = Callable[[str, str], str]
"""(pipeline id, spec field) -> the manifest key of that pipeline's merged model."""


def resolve_input(
    store: ArtifactStore,
    kind: str,
    field: str,
    location: str,
    revision: str | None = None,
    merged_models: MergedModels | None = None,
) -> Artifact:
    """Commit (or find) one input and return its manifest reference. ``merged_models``
    finds the model a ``pipeline:<id>`` location names (only a controller has one)."""
    if location.startswith(PIPELINE_SCHEME):
        if kind != "model" or merged_models is None:
            raise InvalidInput(
                f"{location}: only model.base may name another pipeline, and only a "
                "controller resolves it",
                where=field,
                hint="submit the spec to the controller that ran that pipeline "
                "(`tuneship submit`, or `tuneship run --data-dir` of that run)",
            )
        key = merged_models(location[len(PIPELINE_SCHEME) :], field)
        with tempfile.TemporaryDirectory() as temp:
            fetch_stage(store, key, Path(temp) / "model")
            return resolve_input(store, kind, field, str(Path(temp) / "model"))
    if location.startswith(STORE_SCHEME):
        manifest = _stored_input(store, field, location)
        return Artifact(manifest.key, manifest.digest, manifest.total_size)
    if location.startswith("s3://"):
        with tempfile.TemporaryDirectory() as temp:
            return resolve_input(
                store, kind, field, str(_from_bucket(store, location, field, Path(temp)))
            )
    if location.startswith(HUB_PREFIX) or (kind == "dataset" and location.startswith("hf://")):
        if kind != "dataset" or not location.startswith(HUB_PREFIX):
            raise InvalidInput(
                f"{location!r} names the wrong kind of hub repository for {field}",
                where=field, hint="a model is hf://org/name; a dataset hf://datasets/org/name",
            )  # fmt: skip
        with tempfile.TemporaryDirectory() as temp:
            # Stored with the commit it resolved to, which workers name records by.
            return resolve_input(
                store, kind, field, str(copy_hub_dataset(location, field, Path(temp)))
            )
    if location.startswith("hf://"):
        with tempfile.TemporaryDirectory() as temp:
            return resolve_input(
                store, kind, field, str(_from_hub(location, revision, field, Path(temp)))
            )
    if "://" in location:
        raise InvalidInput(
            f"unsupported location {location!r}", where=field,
            hint="a local path, store:<manifest key>, s3://bucket/prefix, hf://org/name "
            "or hf://datasets/org/name",
        )  # fmt: skip
    path = Path(location)
    if not path.exists():
        hint = "check the path"
        if not path.is_absolute():  # a spec sent as text (the console) has no folder of its own
            hint = (f"a relative path is read from the directory the controller runs in "
                    f"({Path.cwd()}); give an absolute path")  # fmt: skip
        raise InvalidInput(f"{path} does not exist", where=field, hint=hint)
    root = getattr(store, "root", None)  # a local store: its files are not inputs either
    if isinstance(root, Path) and path.resolve().is_relative_to(root.resolve()):
        _refuse_private(field, location)
    manifest = upload_input(store, path, kind=kind)
    return Artifact(manifest.key, manifest.digest, manifest.total_size)


_REUSE_HINT = (
    "a spec reads uploaded inputs only; another pipeline's results are reused through the "
    "stage cache (submit the same spec and inputs and finished stages are not run again). "
    "To train on such a result, `tuneship store fetch KEY DIR` and name DIR (or "
    "`tuneship store put DIR --kind KIND` and name the key it prints)"
)


def _refuse_private(field: str, location: str) -> None:
    raise InvalidInput(
        f"{location} is inside tuneship's pipeline outputs (pipelines/, cache/, serving/), "
        "which a spec cannot read",
        where=field,
        hint=_REUSE_HINT,
    )


def _field_key(field: str, location: str, key: str) -> str:
    """``key`` if safe (``layout.check_key``), else InvalidInput naming the spec field."""
    try:
        return layout.check_key(key)
    except InvalidInput as exc:
        raise InvalidInput(f"{location}: {exc.message}", where=field, hint=exc.hint) from None


def _stored_input(store: ArtifactStore, field: str, location: str) -> Manifest:
    """The input manifest a ``store:KEY`` location names. Only uploaded inputs
    (``inputs/<kind>/<sha256>/manifest.json`` whose files lie beside it) qualify: a
    stage's manifest would hand this pipeline another pipeline's private outputs."""
    key = _field_key(field, location, location[len(STORE_SCHEME) :])
    if not layout.is_input_manifest(key):
        if layout.in_pipeline_area(key):
            _refuse_private(field, location)
        raise InvalidInput(
            f"{location} is not an uploaded input's manifest",
            where=field,
            hint="name the key `tuneship store put` printed "
            "(store:inputs/<kind>/<sha256>/manifest.json)",
        )
    manifest = read_manifest(store, key)
    _, kind, digest, _ = key.split("/")
    if manifest.kind != layout.ManifestKind.INPUT or manifest.root != layout.input_files_prefix(
        kind, digest
    ):
        raise InvalidInput(
            f"{location} is not an input manifest (kind {manifest.kind!r}, files under "
            f"{manifest.root!r})",
            where=field,
            hint=_REUSE_HINT,
        )
    return manifest


def _from_bucket(store: ArtifactStore, location: str, field: str, dest: Path) -> Path:
    """Copy ``s3://bucket/prefix`` out of the store's own bucket into ``dest``."""
    bucket, _, path = location[len("s3://") :].partition("/")
    own_bucket, own_prefix = getattr(store, "bucket", None), getattr(store, "prefix", "")
    if bucket != own_bucket or not path.startswith(own_prefix):
        raise FailedPrecondition(
            f"{location} is outside the artifact store ({store.describe()})", where=field,
            hint="copy it into the store's bucket, or upload it with `tuneship store put`",
        )  # fmt: skip
    key = _field_key(field, location, path[len(own_prefix) :].rstrip("/"))
    if layout.in_pipeline_area(key):
        _refuse_private(field, location)
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


@dataclass(frozen=True)
class UploadSettings:
    """How the controller takes inputs that clients upload through it."""

    max_bytes: int = 20 * GiB
    """The most one upload (all the files of one input together) may carry; a larger
    input is refused before any byte is sent (put it in the store directly instead)."""

    scratch_dir: Path | None = None
    """Where a file being received waits until its sha256 is checked and it is stored
    (one file at a time; default: the system's temporary directory)."""


@dataclass(frozen=True)
class IncomingInput:
    """An input a client is about to upload: its kind, the spec field it fills, the name
    the user gave it (for messages) and every file with its size and sha256."""

    kind: str
    field: str
    name: str
    files: tuple[FileEntry, ...]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class StoredInput:
    """A committed input; ``already_stored`` when identical content was there before."""

    artifact: Artifact
    already_stored: bool

    @property
    def location(self) -> str:
        """What a spec names instead of the local path."""
        return STORE_SCHEME + self.artifact.key


class StoreInputs:
    """The controller's inputs over one store.

    Called with a spec (the controller's ``InputUploader``), it commits or finds each
    input the spec names. ``find`` and ``receive`` take inputs that clients upload
    through the controller: under the same content-addressed key and manifest as
    ``upload_input`` (so a direct upload and one through the controller dedupe), each
    file checked against its listed size and sha256, the manifest written last.
    """

    def __init__(self, store: ArtifactStore, settings: UploadSettings | None = None) -> None:
        self.store = store
        self.settings = settings or UploadSettings()
        self.merged_models: MergedModels | None = None
        """Set by the controller: resolves ``pipeline:<id>`` (see the module doc)."""

    def __call__(self, spec: PipelineSpec) -> dict[str, Artifact]:
        return {
            name: resolve_input(
                self.store, kind, field, location, spec.model.revision, self.merged_models
            )
            for name, kind, field, location in spec_inputs(spec)
            if location is not None
        }

    def find(self, incoming: IncomingInput) -> StoredInput | None:
        """The committed input with exactly these files, or None. InvalidInput when the
        listing is malformed or over ``settings.max_bytes``."""
        self._check(incoming)
        key = layout.input_manifest(incoming.kind, input_digest(incoming.files))
        try:
            manifest = verify_committed(self.store, key)
        except (NotFound, CorruptArtifact):
            return None  # absent, or its files are gone: upload it (again)
        return StoredInput(Artifact(manifest.key, manifest.digest, manifest.total_size), True)

    def receive(self, incoming: IncomingInput, pieces: Iterable[tuple[str, bytes]]) -> StoredInput:
        """Store ``incoming`` from ``pieces``: ``(path, data)`` where a non-empty path
        starts the next file of the listing and data continues the current one.

        Returns at once (reading nothing) when the input is committed already.
        InvalidInput when the files arrive out of order, differ from the listing or the
        stream ends early; then no manifest is written, so nothing is visible.
        """
        found = self.find(incoming)
        if found is not None:
            return found
        digest = input_digest(incoming.files)
        root = layout.input_files_prefix(incoming.kind, digest)
        expected = iter(incoming.files)
        receiving: _IncomingFile | None = None
        try:
            for path, data in pieces:
                if path:
                    if receiving is not None:
                        self._store_file(receiving, root)
                    receiving = self._start_file(incoming, next(expected, None), path)
                elif receiving is None:
                    raise InvalidInput(
                        "data arrived before any file was started", where=incoming.field
                    )
                receiving.write(data)
            if receiving is not None:
                self._store_file(receiving, root)
                receiving = None
        finally:
            if receiving is not None:
                receiving.discard()
        missing = [entry.name for entry in expected]
        if missing:
            raise InvalidInput(
                f"the upload of {incoming.name} ended before {', '.join(missing[:3])}"
                f"{' …' if len(missing) > 3 else ''} ({len(missing)} files missing)",
                where=incoming.field, hint="upload it again",
            )  # fmt: skip
        again = self.find(incoming)  # another client may have committed the same meanwhile
        if again is not None:
            return StoredInput(again.artifact, already_stored=False)
        manifest = write_manifest(
            self.store,
            layout.input_manifest(incoming.kind, digest),
            Manifest(
                kind=layout.ManifestKind.INPUT, root=root, files=incoming.files,
                labels={layout.Labels.INPUT_KIND: incoming.kind}, created=now(),
            ),
        )  # fmt: skip
        return StoredInput(Artifact(manifest.key, manifest.digest, manifest.total_size), False)

    def _check(self, incoming: IncomingInput) -> None:
        where = incoming.field or "InputHeader"
        layout.segment(incoming.kind, "input kind")
        if not incoming.files:
            raise InvalidInput(f"{incoming.name} lists no files to upload", where=where)
        names = [entry.name for entry in incoming.files]
        if len(set(names)) != len(names):
            raise InvalidInput(f"{incoming.name} lists a file twice", where=where)
        for entry in incoming.files:
            layout.check_key(entry.name)
            if entry.size < 0 or len(entry.sha256) != 64:
                raise InvalidInput(
                    f"{entry.name}: size {entry.size} or sha256 {entry.sha256!r} is not valid",
                    where=where,
                )
        limit = self.settings.max_bytes
        if incoming.total_size > limit:
            raise InvalidInput(
                f"{incoming.name} is {human_size(incoming.total_size)}; this controller takes "
                f"uploads of at most {human_size(limit)}",
                where=where,
                hint="put it in the store directly (`tuneship store put`), or raise the "
                "controller's upload limit",
            )

    def _start_file(
        self, incoming: IncomingInput, entry: FileEntry | None, path: str
    ) -> _IncomingFile:
        if entry is None or entry.name != path:
            wanted = entry.name if entry is not None else "no more files"
            raise InvalidInput(
                f"the upload of {incoming.name} sent {path!r} where the listing has {wanted!r}",
                where=incoming.field,
                hint="send the files in the order of the header's listing",
            )
        return _IncomingFile(entry, incoming.field, self.settings.scratch_dir)

    def _store_file(self, receiving: _IncomingFile, root: str) -> None:
        try:
            receiving.finish()
            self.store.put_file(
                layout.join(root, receiving.entry.name), receiving.path,
                sha256=receiving.entry.sha256,
            )  # fmt: skip
        finally:
            receiving.discard()


class _IncomingFile:
    """One file being received into a scratch file, hashed as it arrives."""

    def __init__(self, entry: FileEntry, field: str, scratch_dir: Path | None) -> None:
        self.entry = entry
        self.field = field
        handle, name = tempfile.mkstemp(prefix="tuneship-upload-", dir=scratch_dir)
        self.path = Path(name)
        self._out = os.fdopen(handle, "wb")
        self._hash = hashlib.sha256()
        self.received = 0

    def write(self, data: bytes) -> None:
        if self.received + len(data) > self.entry.size:
            raise InvalidInput(
                f"{self.entry.name} sent more than the {self.entry.size} bytes it listed",
                where=self.field, hint="the file changed while it was uploaded: upload again",
            )  # fmt: skip
        self._out.write(data)
        self._hash.update(data)
        self.received += len(data)

    def finish(self) -> None:
        """Close the scratch file; InvalidInput unless it has the listed size and sha256."""
        self._out.close()
        if self.received != self.entry.size:
            raise InvalidInput(
                f"{self.entry.name} ended after {self.received} of {self.entry.size} bytes",
                where=self.field, hint="upload it again",
            )  # fmt: skip
        if self._hash.hexdigest() != self.entry.sha256:
            raise InvalidInput(
                f"{self.entry.name} does not match the sha256 it was listed with",
                where=self.field, hint="the file changed while it was uploaded: upload again",
            )  # fmt: skip

    def discard(self) -> None:
        if not self._out.closed:
            self._out.close()
        self.path.unlink(missing_ok=True)


def input_uploader(store: ArtifactStore, settings: UploadSettings | None = None) -> StoreInputs:
    """The controller's ``InputUploader`` over ``store``; it also takes client uploads."""
    return StoreInputs(store, settings)
