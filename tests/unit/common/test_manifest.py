"""The commit protocol: files first, manifest last, everything verified on the way back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common import layout
from tuneship.common.errors import FailedPrecondition, NotFound, Unavailable
from tuneship.common.events import ListSink, Progress
from tuneship.common.manifest import InputRef, Manifest, cache_key, spec_hash
from tuneship.common.store import CorruptArtifact, LocalStore
from tuneship.common.store.commit import (
    commit_checkpoint,
    commit_stage,
    fetch_stage,
    find_committed,
    latest_checkpoint,
    prune_checkpoints,
    read_manifest,
    stored_checkpoint,
    upload_input,
    verify_committed,
)
from tuneship.testing.stores import FaultyStore

pytestmark = pytest.mark.unit

VERSIONS = {"llama.cpp": "0.3.36", "tuneship": "0.1.0"}
SPEC = {"lora": {"r": 8, "alpha": 16}, "epochs": 1}


def _outputs(root: Path) -> Path:
    (root / "tokenizer").mkdir(parents=True)
    (root / "adapter_model.safetensors").write_bytes(b"\x01" * 5000)
    (root / "adapter_config.json").write_text('{"r": 8}')
    (root / "tokenizer" / "tokenizer.json").write_text('{"model": {}}')
    return root


def _commit(store, local: Path, attempt: str = "t-1", **kw) -> Manifest:
    return commit_stage(
        store,
        local,
        pipeline="p1",
        stage="train",
        attempt=attempt,
        tool_versions=VERSIONS,
        spec_section=SPEC,
        **kw,
    )


def test_commit_then_fetch_gives_back_every_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    local = _outputs(tmp_path / "out")
    base = InputRef("inputs/model/" + "a" * 64 + "/manifest.json", "b" * 64)
    events = ListSink()

    manifest = _commit(store, local, inputs=[base], events=events)
    fetched = fetch_stage(store, layout.stage_manifest("p1", "train"), tmp_path / "in")

    assert manifest.key == "pipelines/p1/stages/train/manifest.json"
    assert manifest.root == "pipelines/p1/stages/train/staging/t-1/"
    assert [f.name for f in manifest.files] == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer/tokenizer.json",
    ]
    assert manifest.file("adapter_model.safetensors").size == 5000
    assert manifest.inputs == (base,)
    assert manifest.tool_versions == VERSIONS
    assert manifest.spec_hash == spec_hash(SPEC)
    assert manifest.labels[layout.Labels.ATTEMPT] == "t-1"
    assert fetched == manifest and fetched.digest == manifest.digest
    for entry in manifest.files:
        assert (tmp_path / "in" / entry.name).read_bytes() == (local / entry.name).read_bytes()
    progress = events.of_type(Progress)
    assert progress[-1].step == progress[-1].total == manifest.total_size


def test_manifest_document_names_its_fields(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    _commit(store, _outputs(tmp_path / "out"))
    doc = json.loads(store.get_bytes(layout.stage_manifest("p1", "train")))
    assert set(doc) == {
        "format",
        "kind",
        "root",
        "files",
        "inputs",
        "tool_versions",
        "spec_hash",
        "cache_key",
        "labels",
        "created",
    }
    assert set(doc["files"][0]) == {"name", "size", "sha256"}


def test_an_interrupted_commit_leaves_nothing_committed(tmp_path: Path) -> None:
    inner = LocalStore(tmp_path / "store")
    # The store goes away after two of the three files are uploaded.
    store = FaultyStore(inner, fail=lambda op, key: key.endswith("tokenizer.json"))

    with pytest.raises(Unavailable):
        _commit(store, _outputs(tmp_path / "out"))

    assert len(inner.list("pipelines/p1/stages/train/staging/")) == 2
    with pytest.raises(NotFound):
        read_manifest(inner, layout.stage_manifest("p1", "train"))
    with pytest.raises(NotFound):
        fetch_stage(inner, layout.stage_manifest("p1", "train"), tmp_path / "in")
    key = cache_key(SPEC, [], VERSIONS, stage="train")
    assert find_committed(inner, key) is None
    assert not (tmp_path / "in").exists()


def test_the_manifest_is_the_last_write(tmp_path: Path) -> None:
    store = FaultyStore(LocalStore(tmp_path / "store"))
    _commit(store, _outputs(tmp_path / "out"))
    writes = [key for op, key in store.calls if op in {"put_file", "put_bytes"}]
    assert writes.index(layout.stage_manifest("p1", "train")) == len(writes) - 2
    assert writes[-1].startswith("cache/")  # the index only points at a finished commit


def test_a_corrupted_download_is_detected_and_leaves_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    manifest = _commit(store, _outputs(tmp_path / "out"))
    stored = tmp_path / "store" / manifest.file_key("adapter_model.safetensors")
    stored.write_bytes(b"\x01" * 4999 + b"\x02")  # same size, one byte flipped

    with pytest.raises(CorruptArtifact) as caught:
        fetch_stage(store, manifest.key, tmp_path / "in")

    assert "adapter_model.safetensors" in str(caught.value)
    assert not (tmp_path / "in").exists()
    assert list(tmp_path.glob(".in.*")) == []


def test_fetch_replaces_an_old_directory_only_when_complete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    manifest = _commit(store, _outputs(tmp_path / "out"))
    dest = tmp_path / "in"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")
    fetch_stage(store, manifest.key, dest)
    assert not (dest / "stale.txt").exists()
    assert (dest / "adapter_config.json").exists()


def test_cache_key_is_stable_and_sensitive() -> None:
    a = InputRef("k1", "1" * 64)
    b = InputRef("k2", "2" * 64)
    spec = {"r": 8, "alpha": 16}
    key = cache_key(spec, [a, b], VERSIONS, stage="train")
    same = cache_key({"alpha": 16, "r": 8}, [b, a], dict(reversed(VERSIONS.items())), stage="train")
    assert key == same
    assert key != cache_key({"r": 16, "alpha": 16}, [a, b], VERSIONS, stage="train")
    assert key != cache_key(spec, [a], VERSIONS, stage="train")
    assert key != cache_key(spec, [a, b], {**VERSIONS, "llama.cpp": "0.3.37"}, stage="train")
    assert key != cache_key(spec, [a, b], VERSIONS, stage="merge")


def test_finished_work_is_found_by_cache_key_until_its_files_go(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    manifest = _commit(store, _outputs(tmp_path / "out"))

    hit = find_committed(store, cache_key(SPEC, [], VERSIONS, stage="train"))
    assert hit is not None and hit.key == manifest.key and hit.ref == manifest.ref
    assert find_committed(store, cache_key({"other": 1}, [], VERSIONS, stage="train")) is None
    assert find_committed(store, cache_key(SPEC, [], VERSIONS, stage="merge")) is None

    store.delete_prefix(layout.pipeline_prefix("p1"))
    assert find_committed(store, manifest.cache_key) is None
    assert not store.exists(layout.cache_entry(manifest.cache_key))


def test_a_later_attempt_replaces_the_commit(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    _commit(store, _outputs(tmp_path / "one"), attempt="t-1")
    second = tmp_path / "two"
    second.mkdir()
    (second / "only.bin").write_bytes(b"x")
    manifest = _commit(store, second, attempt="t-2")
    assert read_manifest(store, manifest.key).root.endswith("/staging/t-2/")
    assert [f.name for f in read_manifest(store, manifest.key).files] == ["only.bin"]


def test_latest_checkpoint_ignores_an_unfinished_one(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    assert latest_checkpoint(store, pipeline="p1", stage="train") is None
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "adapter.safetensors").write_bytes(b"w" * 10)
    commit_checkpoint(store, ckpt, pipeline="p1", stage="train", step=10)
    commit_checkpoint(store, ckpt, pipeline="p1", stage="train", step=9)
    # step 20 was cut short: its files are there, its manifest is not.
    unfinished = layout.checkpoint_prefix("p1", "train", 20) + "adapter.safetensors"
    store.put_file(unfinished, ckpt / "adapter.safetensors")

    latest = latest_checkpoint(store, pipeline="p1", stage="train")
    assert latest is not None and latest.labels[layout.Labels.STEP] == "10"
    assert latest.key == layout.checkpoint_prefix("p1", "train", 10) + layout.MANIFEST


def test_pruning_keeps_the_newest_checkpoints_and_one_in_flight(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "adapter.safetensors").write_bytes(b"w")
    for step in (10, 20, 30):
        commit_checkpoint(store, ckpt, pipeline="p1", stage="train", step=step)
    for step in (5, 40):  # an abandoned upload, and one being written right now
        store.put_file(
            layout.checkpoint_prefix("p1", "train", step) + "a.bin", ckpt / "adapter.safetensors"
        )

    assert prune_checkpoints(store, pipeline="p1", stage="train", keep=2) == 2
    left = {layout.checkpoint_step(o.key.rsplit("/", 1)[0] + "/") for o in store.list("pipelines/")}
    assert left == {20, 30, 40}


def test_pruning_also_keeps_the_best_evaluations_checkpoint(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "adapter.safetensors").write_bytes(b"w")
    for step in (10, 20, 30, 40):
        commit_checkpoint(store, ckpt, pipeline="p1", stage="train", step=step)

    removed = prune_checkpoints(store, pipeline="p1", stage="train", keep=2, also_keep=(10, 99))
    left = {layout.checkpoint_step(o.key.rsplit("/", 1)[0] + "/") for o in store.list("pipelines/")}
    assert (removed, left) == (1, {10, 30, 40})
    assert stored_checkpoint(store, pipeline="p1", stage="train", step=10) is not None
    assert stored_checkpoint(store, pipeline="p1", stage="train", step=20) is None


def test_inputs_are_content_addressed_and_uploaded_once(tmp_path: Path) -> None:
    store = FaultyStore(LocalStore(tmp_path / "store"))
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": []}\n')

    first = upload_input(store, data, kind="dataset")
    uploads = len(store.operations("put_file"))
    second = upload_input(store, data, kind="dataset")

    assert first.key == second.key and first.ref == second.ref
    assert len(store.operations("put_file")) == uploads == 1
    assert [f.name for f in first.files] == ["train.jsonl"]
    fetch_stage(store, first.key, tmp_path / "fetched")
    assert (tmp_path / "fetched" / "train.jsonl").read_text() == data.read_text()


def test_unreadable_manifests_are_errors(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("pipelines/p/bad/manifest.json", b"not json")
    with pytest.raises(CorruptArtifact):
        read_manifest(store, "pipelines/p/bad/manifest.json")
    store.put_bytes("pipelines/p/new/manifest.json", json.dumps({"format": 99}).encode())
    with pytest.raises(FailedPrecondition) as caught:
        read_manifest(store, "pipelines/p/new/manifest.json")
    assert "upgrade" in str(caught.value)


def test_verify_committed_finds_a_truncated_file_and_deep_finds_a_flipped_byte(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "store")
    manifest = _commit(store, _outputs(tmp_path / "out"))
    assert verify_committed(store, manifest.key, deep=True) == manifest
    stored = tmp_path / "store" / manifest.file_key("adapter_model.safetensors")

    stored.write_bytes(b"\x01" * 4999 + b"\x02")
    assert verify_committed(store, manifest.key) == manifest  # sizes alone look right
    with pytest.raises(CorruptArtifact):
        verify_committed(store, manifest.key, deep=True)

    stored.write_bytes(b"\x01" * 10)
    with pytest.raises(CorruptArtifact):
        verify_committed(store, manifest.key)
    stored.unlink()
    with pytest.raises(NotFound):
        verify_committed(store, manifest.key)
