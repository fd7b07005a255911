"""A pipeline's committed files, as people list and download them.

Only what a pipeline's stage outputs commit can be read: the files their manifests
list, nothing else of the store. A download is hashed as it streams and compared with
the manifest's sha256 at the end, so a damaged copy never passes for a good one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from tuneship.common.errors import FailedPrecondition, InvalidInput, NotFound
from tuneship.common.manifest import Manifest
from tuneship.common.store.base import ArtifactStore, CorruptArtifact
from tuneship.common.store.commit import read_manifest
from tuneship.controller.state import PipelineView


@dataclass(frozen=True)
class StoredFile:
    """One committed file of a stage output; ``key`` is where the store keeps it."""

    stage: str
    output: str
    path: str
    size: int
    sha256: str
    key: str


def _manifest(store: ArtifactStore, ref: dict[str, object]) -> Manifest:
    manifest = read_manifest(store, str(ref["key"]))
    expected = str(ref.get("sha256") or "")
    if expected and manifest.digest != expected:
        raise CorruptArtifact(
            f"the manifest's sha256 is {manifest.digest[:12]}…, the pipeline recorded "
            f"{expected[:12]}…",
            where=manifest.key,
            hint="the committed output changed after its stage finished; retry that stage",
        )
    return manifest


def pipeline_files(store: ArtifactStore, view: PipelineView) -> list[StoredFile]:
    """Every file of every committed output of the pipeline's stages, in stage order,
    then by path (an output whose manifest is gone is skipped: the store was cleaned)."""
    found: list[StoredFile] = []
    for stage in view.stages:
        for output, ref in sorted(stage.outputs.items()):
            try:
                manifest = _manifest(store, ref)
            except NotFound:
                continue
            found.extend(
                StoredFile(stage.name, output, f.name, f.size, f.sha256, manifest.file_key(f.name))
                for f in sorted(manifest.files, key=lambda f: f.name)
            )
    return found


def find_file(
    store: ArtifactStore, view: PipelineView, stage: str, output: str, path: str
) -> StoredFile:
    """The file ``path`` of the stage's ``output`` (empty: the stage's own), as its
    manifest lists it; NotFound naming what there is otherwise."""
    known = [s.name for s in view.stages]
    if stage not in known:
        raise NotFound(
            f"pipeline {view.id} has no stage {stage!r}", where="ReadArtifactRequest.stage",
            hint=f"one of: {', '.join(known)}",
        )  # fmt: skip
    outputs = view.stage(stage).outputs
    output = output or stage
    if output not in outputs:
        named = ", ".join(sorted(outputs)) or "none yet (it has not succeeded)"
        raise NotFound(
            f"the {stage} stage of pipeline {view.id} has no committed output {output!r}",
            where="ReadArtifactRequest.output", hint=f"its outputs: {named}",
        )  # fmt: skip
    manifest = _manifest(store, outputs[output])
    for entry in manifest.files:
        if entry.name == path:
            return StoredFile(stage, output, path, entry.size, entry.sha256,
                              manifest.file_key(path))  # fmt: skip
    raise NotFound(
        f"the {stage} output of pipeline {view.id} has no file {path!r}",
        where="ReadArtifactRequest.path",
        hint=f"`tuneship artifacts {view.id}` lists its {len(manifest.files)} files",
    )


def read_verified(store: ArtifactStore, stored: StoredFile, offset: int = 0) -> Iterator[bytes]:
    """The file's bytes from ``offset`` on, in pieces; CorruptArtifact after the last
    one when they are not the bytes the manifest lists (its size; from 0 its sha256
    too: a resumed read cannot hash the bytes before it). InvalidInput for an offset
    outside the file."""
    if not 0 <= offset <= stored.size:
        raise InvalidInput(
            f"offset {offset} is outside {stored.path} ({stored.size} bytes)",
            where="ReadArtifactRequest.offset", hint=f"0 to {stored.size}",
        )  # fmt: skip
    return _pieces(store, stored, offset)


def _pieces(store: ArtifactStore, stored: StoredFile, offset: int) -> Iterator[bytes]:
    digest = hashlib.sha256()
    size = offset
    for piece in store.read_chunks(stored.key, offset):
        digest.update(piece)
        size += len(piece)
        if size > stored.size:
            break
        yield piece
    if size != stored.size or (offset == 0 and digest.hexdigest() != stored.sha256):
        raise CorruptArtifact(
            f"{stored.path} read back as {size} bytes with sha256 {digest.hexdigest()[:12]}…; "
            f"its manifest lists {stored.size} bytes with sha256 {stored.sha256[:12]}…",
            where=stored.key,
            hint=f"the stored copy is damaged; retry the {stored.stage} stage to write it again",
        )


def require_store(store: ArtifactStore | None) -> ArtifactStore:
    if store is None:
        raise FailedPrecondition(
            "this controller has no artifact store to read files from",
            hint="read them from the store itself (`tuneship store`)",
        )
    return store
