"""Committing directories to the artifact store and fetching them back, verified.

The stage services call these; nothing else writes or reads manifests::

    manifest = commit_stage(store, out_dir, pipeline="p1", stage="train", attempt="t-42",
                            inputs=[base.ref, data.ref], tool_versions=versions,
                            spec_section=spec.train.model_dump(mode="json"))
    fetch_stage(store, manifest.key, work / "adapter")   # every file sha256-checked
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneship.common import layout
from tuneship.common.atomic import replace_dir
from tuneship.common.errors import NotFound
from tuneship.common.events import EventSink, Log, NullSink, Progress
from tuneship.common.hashing import sha256_bytes
from tuneship.common.manifest import (
    FileEntry,
    InputRef,
    Manifest,
    cache_key,
    now,
    scan_dir,
    spec_hash,
)
from tuneship.common.store.base import ArtifactStore, CorruptArtifact


def _upload(
    store: ArtifactStore,
    local: Path,
    root: str,
    files: Sequence[FileEntry],
    events: EventSink,
    stage: str,
) -> None:
    total = sum(f.size for f in files)
    done = 0
    for entry in files:
        source = local if local.is_file() else local / entry.name
        store.put_file(layout.join(root, entry.name), source, sha256=entry.sha256)
        done += entry.size
        events.emit(Progress(stage, done, total, unit="bytes", message=f"uploaded {entry.name}"))


def write_manifest(store: ArtifactStore, key: str, manifest: Manifest) -> Manifest:
    """Write ``manifest`` at ``key`` (one atomic object write) and return it with its
    ``key`` and ``digest`` set. Call it only after every listed file is stored."""
    data = manifest.to_json()
    store.put_bytes(layout.check_key(key), data)
    return Manifest.from_json(data, key)


def read_manifest(store: ArtifactStore, key: str) -> Manifest:
    """The manifest at ``key``; NotFound when nothing is committed there."""
    return Manifest.from_json(store.get_bytes(key), key)


def commit_stage(
    store: ArtifactStore,
    local_dir: Path,
    *,
    pipeline: str,
    stage: str,
    attempt: str,
    inputs: Sequence[InputRef | Manifest] = (),
    tool_versions: Mapping[str, str] | None = None,
    spec_section: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    events: EventSink | None = None,
) -> Manifest:
    """Upload ``local_dir`` as the output of one stage attempt and commit it.

    Files go under ``layout.staging_prefix(pipeline, stage, attempt)`` (``attempt``
    must be unique per try, e.g. the task id); then the manifest is written at
    ``layout.stage_manifest(pipeline, stage)`` and copied to the cache index under its
    cache key. Returns the manifest; ``manifest.ref`` names it as a later stage's input.
    """
    events = events or NullSink()
    versions = dict(tool_versions or {})
    refs = tuple(i.ref if isinstance(i, Manifest) else i for i in inputs)
    files = scan_dir(local_dir)
    root = layout.staging_prefix(pipeline, stage, attempt)
    _upload(store, Path(local_dir), root, files, events, stage)
    key = cache_key(spec_section, refs, versions, stage=stage)
    manifest = Manifest(
        kind=layout.ManifestKind.STAGE,
        root=root,
        files=files,
        inputs=refs,
        tool_versions=versions,
        spec_hash=spec_hash(spec_section),
        cache_key=key,
        labels={
            layout.Labels.PIPELINE: pipeline,
            layout.Labels.STAGE: stage,
            layout.Labels.ATTEMPT: attempt,
            **(labels or {}),
        },
        created=now(),
    )
    committed = write_manifest(store, layout.stage_manifest(pipeline, stage), manifest)
    # The cache entry comes after the commit: losing it only costs a rerun.
    _index(store, committed)
    events.emit(Log(stage, f"committed {len(files)} files to {committed.key}"))
    return committed


def fetch_stage(
    store: ArtifactStore, manifest_key: str, dest: Path, *, events: EventSink | None = None
) -> Manifest:
    """Download every file of the manifest at ``manifest_key`` into ``dest``.

    Each file is checked against the manifest's size and sha256 (CorruptArtifact when
    one differs); files land in a temporary directory beside ``dest`` that replaces
    it only when all of them are verified. Returns the manifest.
    """
    events = events or NullSink()
    manifest = read_manifest(store, manifest_key)
    stage = manifest.labels.get(layout.Labels.STAGE, manifest.kind)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        done = 0
        for entry in manifest.files:
            target = temp / entry.name
            target.parent.mkdir(parents=True, exist_ok=True)
            info = store.get_file(manifest.file_key(entry.name), target, sha256=entry.sha256)
            if info.size != entry.size:
                raise CorruptArtifact(
                    f"{entry.name} has {info.size} bytes, the manifest says {entry.size}",
                    where=manifest.file_key(entry.name),
                )
            done += entry.size
            events.emit(
                Progress(stage, done, manifest.total_size, "bytes", message=f"fetched {entry.name}")
            )
        replace_dir(temp, dest)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return manifest


def verify_committed(store: ArtifactStore, manifest_key: str, *, deep: bool = False) -> Manifest:
    """Check that every file of a committed manifest is stored as the manifest says.

    Shallow: each object exists with the listed size and, where the store records
    one, the listed sha256. ``deep``: every file is also downloaded and re-hashed
    (into a temporary directory, then discarded). Raises NotFound or CorruptArtifact
    naming the first bad file; returns the manifest.
    """
    manifest = read_manifest(store, manifest_key)
    for entry in manifest.files:
        info = store.stat(manifest.file_key(entry.name))
        if info.size != entry.size or (info.sha256 and info.sha256 != entry.sha256):
            raise CorruptArtifact(
                f"{entry.name} is stored with {info.size} bytes and sha256 {info.sha256}; "
                f"the manifest says {entry.size} bytes and {entry.sha256}",
                where=manifest.file_key(entry.name),
                hint="rerun the stage that produced it",
            )
    if deep:
        with tempfile.TemporaryDirectory(prefix="tuneship-verify-") as scratch:
            fetch_stage(store, manifest_key, Path(scratch) / "files")
    return manifest


def _complete(store: ArtifactStore, manifest: Manifest) -> bool:
    stored = {info.key: info.size for info in store.list(manifest.root)}
    return all(stored.get(manifest.file_key(f.name)) == f.size for f in manifest.files)


def _index(store: ArtifactStore, manifest: Manifest) -> None:
    pointer = {"manifest": manifest.key, "sha256": manifest.digest}
    store.put_bytes(layout.cache_entry(manifest.cache_key), json.dumps(pointer).encode())


def find_committed(store: ArtifactStore, key: str) -> Manifest | None:
    """The committed manifest whose cache key is ``key``, or None.

    The manifest returned is the one at its stage's own location (``.key``), so a
    reused result is named exactly as if this stage had made it. An entry whose
    manifest or files are gone (their pipeline was deleted) is dropped and None
    returned, so the stage runs again.
    """
    entry = layout.cache_entry(key)
    try:
        pointer = json.loads(store.get_bytes(entry))
        manifest = read_manifest(store, str(pointer["manifest"]))
    except NotFound:
        store.delete(entry)
        return None
    except (ValueError, KeyError, TypeError, CorruptArtifact):
        store.delete(entry)
        return None
    if manifest.cache_key != key or not _complete(store, manifest):
        store.delete(entry)
        return None
    return manifest


def commit_checkpoint(
    store: ArtifactStore,
    local_dir: Path,
    *,
    pipeline: str,
    stage: str,
    step: int,
    tool_versions: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    events: EventSink | None = None,
) -> Manifest:
    """Store a training checkpoint under ``layout.checkpoint_prefix(pipeline, stage, step)``
    with its manifest written last; :func:`latest_checkpoint` finds it on resume."""
    events = events or NullSink()
    files = scan_dir(local_dir)
    root = layout.checkpoint_prefix(pipeline, stage, step)
    _upload(store, Path(local_dir), root, files, events, stage)
    manifest = Manifest(
        kind=layout.ManifestKind.CHECKPOINT,
        root=root,
        files=files,
        tool_versions=dict(tool_versions or {}),
        labels={
            layout.Labels.PIPELINE: pipeline,
            layout.Labels.STAGE: stage,
            layout.Labels.STEP: str(step),
            **(labels or {}),
        },
        created=now(),
    )
    return write_manifest(store, root + layout.MANIFEST, manifest)


def latest_checkpoint(store: ArtifactStore, *, pipeline: str, stage: str) -> Manifest | None:
    """The committed checkpoint with the highest step, or None. Step prefixes without a
    manifest (an upload cut short) are ignored."""
    prefix = layout.checkpoints_prefix(pipeline, stage)
    steps = []
    for info in store.list(prefix):
        if info.key.endswith("/" + layout.MANIFEST):
            step = layout.checkpoint_step(info.key[: -len(layout.MANIFEST)])
            if step is not None:
                steps.append(step)
    if not steps:
        return None
    return read_manifest(
        store, layout.checkpoint_prefix(pipeline, stage, max(steps)) + layout.MANIFEST
    )


def stored_checkpoint(
    store: ArtifactStore, *, pipeline: str, stage: str, step: int
) -> Manifest | None:
    """The committed checkpoint at ``step``, or None."""
    try:
        key = layout.checkpoint_prefix(pipeline, stage, step) + layout.MANIFEST
        return read_manifest(store, key)
    except NotFound:
        return None


def input_digest(files: Iterable[FileEntry]) -> str:
    """The content address of an input: the sha256 of its file listing (names, sizes,
    sha256s) sorted by name. Every way an input enters the store uses this one."""
    ordered = sorted(files, key=lambda f: f.name)
    return sha256_bytes(json.dumps([vars(f) for f in ordered], sort_keys=True).encode())


def upload_input(
    store: ArtifactStore, path: Path, *, kind: str, events: EventSink | None = None
) -> Manifest:
    """Upload a base model directory or dataset file as a pipeline input.

    Inputs are content-addressed (``layout.input_prefix(kind, digest)``): uploading the
    same files again finds the committed manifest and sends nothing.
    """
    events = events or NullSink()
    files = scan_dir(path)
    digest = input_digest(files)
    key = layout.input_manifest(kind, digest)
    try:
        existing = read_manifest(store, key)
        if _complete(store, existing):
            events.emit(Log(kind, f"{path} is already stored as {key}"))
            return existing
    except NotFound:
        pass
    root = layout.input_files_prefix(kind, digest)
    _upload(store, Path(path), root, files, events, kind)
    manifest = Manifest(
        kind=layout.ManifestKind.INPUT,
        root=root,
        files=files,
        labels={layout.Labels.INPUT_KIND: kind},
        created=now(),
    )
    return write_manifest(store, key, manifest)


def prune_checkpoints(
    store: ArtifactStore,
    *,
    pipeline: str,
    stage: str,
    keep: int = 2,
    also_keep: Collection[int] = (),
) -> int:
    """Delete all but the ``keep`` newest committed checkpoints and those at the steps of
    ``also_keep`` (e.g. the best evaluation's), and any step prefix without a manifest
    older than the newest ones; returns how many step prefixes were removed."""
    prefix = layout.checkpoints_prefix(pipeline, stage)
    steps: dict[int, bool] = {}
    for info in store.list(prefix):
        step = layout.checkpoint_step(info.key.rsplit("/", 1)[0] + "/")
        if step is not None:
            steps[step] = steps.get(step, False) or info.key.endswith("/" + layout.MANIFEST)
    committed = sorted(s for s, done in steps.items() if done)
    newest = set(committed[-keep:]) if keep > 0 else set()
    oldest_kept = min(newest) if newest else None
    kept = newest | (set(also_keep) & set(committed))
    doomed = [
        s
        for s, done in steps.items()
        if s not in kept and (done or (oldest_kept is not None and s < oldest_kept))
    ]
    for step in doomed:
        store.delete_prefix(layout.checkpoint_prefix(pipeline, stage, step))
    return len(doomed)
