"""LocalStore, the key layout and store settings: what embedded mode relies on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tuneship.common import layout
from tuneship.common.errors import FailedPrecondition, InvalidInput, NotFound
from tuneship.common.store import (
    CorruptArtifact,
    LocalStore,
    S3Store,
    StoreSettings,
    open_store,
)

pytestmark = pytest.mark.unit


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".part")]


def test_file_round_trip_is_hashed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF" + bytes(range(256)) * 100)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    put = store.put_file("pipelines/p/model.gguf", source, sha256=digest)
    got = store.get_file("pipelines/p/model.gguf", tmp_path / "out" / "copy.gguf", sha256=digest)

    assert put.sha256 == got.sha256 == digest
    assert (tmp_path / "out" / "copy.gguf").read_bytes() == source.read_bytes()
    assert store.stat("pipelines/p/model.gguf").size == source.stat().st_size


def test_upload_of_a_file_that_changed_since_it_was_hashed_stores_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    source = tmp_path / "weights.bin"
    source.write_bytes(b"new contents")
    stale = hashlib.sha256(b"old contents").hexdigest()

    with pytest.raises(CorruptArtifact):
        store.put_file("pipelines/p/weights.bin", source, sha256=stale)

    assert not store.exists("pipelines/p/weights.bin")
    assert _leftovers(tmp_path / "store") == []


def test_download_with_the_wrong_hash_leaves_no_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("pipelines/p/data.json", b'{"a": 1}')
    dest = tmp_path / "dl" / "data.json"

    with pytest.raises(CorruptArtifact) as caught:
        store.get_file("pipelines/p/data.json", dest, sha256="0" * 64)

    assert "pipelines/p/data.json" in str(caught.value)
    assert not dest.exists()
    assert _leftovers(tmp_path / "dl") == []


def test_a_missing_key_is_not_found(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    with pytest.raises(NotFound):
        store.get_bytes("nothing/here.json")  # a store never written to is empty
    store.put_bytes("cache/something.json", b"{}")
    with pytest.raises(NotFound) as caught:
        store.get_bytes("nothing/here.json")
    assert "nothing/here.json" in str(caught.value)
    assert not store.exists("nothing/here.json")


def test_list_is_sorted_recursive_and_skips_uploads_in_flight(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    for key in [
        "pipelines/p/b/2.txt",
        "pipelines/p/a.txt",
        "pipelines/p/b/1.txt",
        "inputs/other.txt",
    ]:
        store.put_bytes(key, key.encode())
    (tmp_path / "store" / "pipelines" / "p" / ".a.txt.abc.part").write_bytes(b"half")

    assert [o.key for o in store.list("pipelines/p/")] == [
        "pipelines/p/a.txt",
        "pipelines/p/b/1.txt",
        "pipelines/p/b/2.txt",
    ]
    assert store.list("absent/") == []
    assert store.delete_prefix("pipelines/p/b/") == 2
    assert [o.key for o in store.list()] == ["inputs/other.txt", "pipelines/p/a.txt"]
    assert store.delete("inputs/other.txt") and not store.delete("inputs/other.txt")


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside", "a//b", "a/./b", "a/../b"])
def test_keys_cannot_escape_the_store(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "store")
    with pytest.raises(InvalidInput):
        store.put_bytes(key, b"x")


def test_whole_store_deletion_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        LocalStore(tmp_path).delete_prefix("")


def test_layout_keys() -> None:
    assert layout.stage_manifest("p1", "train") == "pipelines/p1/stages/train/manifest.json"
    assert layout.staging_prefix("p1", "train", "t-7") == "pipelines/p1/stages/train/staging/t-7/"
    checkpoint = layout.checkpoint_prefix("p1", "train", 120)
    assert checkpoint == "pipelines/p1/stages/train/checkpoints/step-00000120/"
    assert layout.checkpoint_step(checkpoint) == 120
    assert layout.input_manifest("dataset", "ab" * 32).startswith("inputs/dataset/abab")
    with pytest.raises(InvalidInput) as caught:
        layout.stage_prefix("p1", "../train")
    assert caught.value.where == "stage"
    with pytest.raises(InvalidInput):
        layout.cache_entry("not-a-digest")


def test_settings_pick_the_store(tmp_path: Path) -> None:
    local = open_store(StoreSettings.from_env({"TUNESHIP_STORE": f"local:{tmp_path}"}))
    assert isinstance(local, LocalStore) and local.root == tmp_path

    env = {
        "TUNESHIP_STORE": "s3://artifacts/team-a",
        "TUNESHIP_S3_ENDPOINT": "127.0.0.1:9",
        "TUNESHIP_S3_ACCESS_KEY": "k",
        "TUNESHIP_S3_SECRET_KEY": "s",
        "TUNESHIP_S3_SECURE": "false",
        "TUNESHIP_S3_PART_SIZE_MIB": "8",
    }
    remote = open_store(StoreSettings.from_env(env))
    assert isinstance(remote, S3Store)
    assert (remote.bucket, remote.prefix, remote.part_size) == ("artifacts", "team-a/", 8 << 20)
    assert remote.describe() == "s3://artifacts/team-a/ at 127.0.0.1:9"

    default = StoreSettings.from_env({}, default_url=f"local:{tmp_path}/store")
    assert default.url == f"local:{tmp_path}/store"


@pytest.mark.parametrize(
    ("env", "where"),
    [
        ({"TUNESHIP_STORE": "s3://bucket"}, "TUNESHIP_S3_ENDPOINT"),
        ({"TUNESHIP_STORE": "gs://bucket"}, "TUNESHIP_STORE"),
        ({"TUNESHIP_S3_RETRIES": "many"}, "TUNESHIP_S3_RETRIES"),
        (
            {
                "TUNESHIP_STORE": "s3://b",
                "TUNESHIP_S3_ENDPOINT": "h:1",
                "TUNESHIP_S3_PART_SIZE_MIB": "1",
            },
            "TUNESHIP_S3_PART_SIZE_MIB",
        ),
    ],
)
def test_bad_store_settings_say_which_variable(env: dict[str, str], where: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        open_store(StoreSettings.from_env(env))
    assert caught.value.where == where


def test_a_store_that_cannot_be_written_says_which_and_what_to_check(tmp_path: Path) -> None:
    # A file where the store's directory should be: refused even to root, like a
    # read-only or full filesystem (tests run as root, so permissions would not do).
    blocker = tmp_path / "store"
    blocker.write_text("not a directory")
    store = LocalStore(blocker / "inner")
    source = tmp_path / "weights.bin"
    source.write_bytes(b"x" * 10)
    for write in (
        lambda: store.put_file("cache/b.bin", source),
        lambda: store.put_bytes("cache/c", b"1"),
    ):
        with pytest.raises(FailedPrecondition) as caught:
            write()
        assert f"local store {blocker / 'inner'}" in caught.value.message
        assert "must be writable" in (caught.value.hint or "")
