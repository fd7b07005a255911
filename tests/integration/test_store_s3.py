"""S3Store against a real S3 server process (moto) on loopback."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr
from tuneship.common import layout
from tuneship.common.errors import NotFound, Unavailable
from tuneship.common.store import CorruptArtifact, S3Store, StoreSettings, open_store
from tuneship.common.store.base import CHUNK
from tuneship.common.store.commit import (
    commit_stage,
    fetch_stage,
    find_committed,
    read_manifest,
    verify_committed,
)
from tuneship.testing.s3server import S3ServerProcess, free_port
from tuneship.testing.stores import FaultyStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MiB = 1 << 20


@pytest.fixture
def store(s3_server: S3ServerProcess) -> S3Store:
    """A fresh bucket; 5 MiB parts (S3's minimum) so a 12 MiB file has three."""
    return S3Store(
        s3_server.endpoint,
        s3_server.access_key,
        s3_server.secret_key,
        f"t-{uuid.uuid4().hex[:12]}",
        secure=False,
        part_size=5 * MiB,
        parallel_parts=3,
        retries=2,
        backoff_s=0.05,
    )


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "model.gguf"
    path.write_bytes(os.urandom(12 * MiB + 12345))
    return path


def _incomplete_uploads(store: S3Store) -> list[str]:
    found = store.client._list_multipart_uploads(store.bucket, prefix="")
    return [u.object_name for u in found.uploads]


def _count_parallel_parts(store: S3Store) -> dict[str, int]:
    """Wrap the SDK's part upload to observe how many parts are in flight at once."""
    upload_part = store.client._upload_part
    seen = {"parts": 0, "now": 0, "max": 0}
    lock = threading.Lock()

    def counting(*args, **kwargs):
        with lock:
            seen["parts"] += 1
            seen["now"] += 1
            seen["max"] = max(seen["max"], seen["now"])
        try:
            time.sleep(0.2)  # long enough for the other parts to start
            return upload_part(*args, **kwargs)
        finally:
            with lock:
                seen["now"] -= 1

    store.client._upload_part = counting  # type: ignore[method-assign]
    return seen


def test_large_file_goes_up_in_parallel_parts_and_comes_back_verified(
    store: S3Store, big_file: Path, tmp_path: Path
) -> None:
    seen = _count_parallel_parts(store)
    digest = hashlib.sha256(big_file.read_bytes()).hexdigest()

    put = store.put_file("pipelines/p/model.gguf", big_file)
    got = store.get_file("pipelines/p/model.gguf", tmp_path / "copy.gguf")

    assert seen["parts"] == 3 and seen["max"] == 3
    stored = store.client.stat_object(store.bucket, "pipelines/p/model.gguf")
    assert str(stored.etag).endswith("-3")  # a completed three-part multipart upload
    assert put.sha256 == got.sha256 == store.stat("pipelines/p/model.gguf").sha256 == digest
    assert (tmp_path / "copy.gguf").read_bytes() == big_file.read_bytes()
    assert _incomplete_uploads(store) == []


def test_a_file_that_changed_since_hashing_is_aborted_not_stored(
    store: S3Store, big_file: Path
) -> None:
    seen = _count_parallel_parts(store)
    with pytest.raises(CorruptArtifact):
        store.put_file("pipelines/p/model.gguf", big_file, sha256="0" * 64)

    assert seen["parts"] >= 1  # the multipart upload had begun
    time.sleep(0.5)  # let parts that were in flight during the abort finish
    assert not store.exists("pipelines/p/model.gguf")
    assert _incomplete_uploads(store) == []


def test_a_dropped_upload_is_retried_and_its_parts_cleaned_up(
    store: S3Store, big_file: Path
) -> None:
    """The connection drops mid-upload and the aborts cannot get through either: the
    retry sweeps the orphaned multipart upload before it starts again."""
    upload_part, abort = store.client._upload_part, store.client._abort_multipart_upload
    failures = {"part": 1, "abort": 2}

    def flaky_part(*args, **kwargs):
        if failures["part"]:
            failures["part"] -= 1
            raise ConnectionResetError("connection dropped")
        return upload_part(*args, **kwargs)

    def flaky_abort(*args, **kwargs):
        if failures["abort"]:
            failures["abort"] -= 1
            raise ConnectionResetError("still down")
        return abort(*args, **kwargs)

    store.client._upload_part = flaky_part  # type: ignore[method-assign]
    store.client._abort_multipart_upload = flaky_abort  # type: ignore[method-assign]

    store.put_file("pipelines/p/model.gguf", big_file)

    assert failures == {"part": 0, "abort": 0}
    assert store.stat("pipelines/p/model.gguf").size == big_file.stat().st_size
    time.sleep(0.3)  # parts of the first try that were still in flight
    assert _incomplete_uploads(store) == []


def test_a_corrupted_object_is_detected_on_download(store: S3Store, tmp_path: Path) -> None:
    store.put_bytes("pipelines/p/a.txt", b"original")
    # Someone overwrites the bytes behind the recorded hash.
    store.client.put_object(
        store.bucket,
        "pipelines/p/b.txt",
        io.BytesIO(b"tampered"),
        8,
        metadata={layout.Meta.SHA256: hashlib.sha256(b"original").hexdigest()},
    )
    dest = tmp_path / "b.txt"

    with pytest.raises(CorruptArtifact) as caught:
        store.get_file("pipelines/p/b.txt", dest)
    assert "pipelines/p/b.txt" in str(caught.value)
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(CorruptArtifact):
        store.get_file("pipelines/p/a.txt", dest, sha256="f" * 64)
    assert store.get_file("pipelines/p/a.txt", dest).size == 8


def test_missing_keys_are_not_found_with_their_location(store: S3Store, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as caught:
        store.get_bytes("pipelines/nope/manifest.json")
    assert store.bucket in str(caught.value) and "pipelines/nope/manifest.json" in str(caught.value)
    with pytest.raises(NotFound):
        store.get_file("pipelines/nope/x.bin", tmp_path / "x.bin")
    assert not store.exists("pipelines/nope/x.bin")


def test_an_unreachable_store_is_unavailable_after_retries() -> None:
    sleeps: list[float] = []
    port = free_port()
    store = S3Store(
        f"127.0.0.1:{port}", "k", "secret", "bucket", secure=False, retries=2, sleep=sleeps.append
    )
    with pytest.raises(Unavailable) as caught:
        store.get_bytes("pipelines/p/manifest.json")
    assert f"127.0.0.1:{port}" in str(caught.value) and "bucket" in str(caught.value)
    assert caught.value.retryable
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] * 0.9  # backed off


def test_operations_retry_until_the_server_comes_up(moto_server_bin: Path, tmp_path: Path) -> None:
    port = free_port()
    server = S3ServerProcess(moto_server_bin, port)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    store = S3Store(
        server.endpoint, "k", "secret", "late-bucket", secure=False, retries=10,
        backoff_s=0.1, max_backoff_s=0.5, sleep=sleep,
    )  # fmt: skip
    source = tmp_path / "data.jsonl"
    source.write_text('{"messages": []}\n')
    starter = threading.Timer(1.0, server.start)
    starter.start()
    try:
        store.put_file("inputs/data.jsonl", source)
        assert store.get_bytes("inputs/data.jsonl") == source.read_bytes()
    finally:
        starter.join()
        server.close()
    assert sleeps, "the first tries should have failed and backed off"


def test_crashed_uploads_are_swept(store: S3Store) -> None:
    store.put_bytes("pipelines/p/keep.json", b"{}")
    store.client._create_multipart_upload(store.bucket, "pipelines/p/half.bin", {})
    store.client._create_multipart_upload(store.bucket, "other/half.bin", {})
    assert store.abort_incomplete_uploads("pipelines/") == 1
    assert _incomplete_uploads(store) == ["other/half.bin"]
    assert store.delete_prefix("pipelines/") == 1
    assert store.list() == []


def _outputs(root: Path, big_file: Path) -> Path:
    (root / "tokenizer").mkdir(parents=True)
    (root / "tokenizer" / "tokenizer.json").write_text('{"model": {}}')
    (root / "model.gguf").symlink_to(big_file)
    return root


def test_stage_commit_and_fetch_through_s3(
    s3_server: S3ServerProcess, big_file: Path, tmp_path: Path
) -> None:
    settings = StoreSettings(
        url=f"s3://c-{uuid.uuid4().hex[:12]}/team-a",
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=SecretStr(s3_server.secret_key),
        s3_secure=False,
        part_size_mib=5,
    )
    store = open_store(settings)
    spec = {"quant_types": ["q4_k_m"]}
    manifest = commit_stage(
        store, _outputs(tmp_path / "out", big_file), pipeline="p1", stage="convert",
        attempt="t-1", tool_versions={"llama.cpp": "0.3.36"}, spec_section=spec,
    )  # fmt: skip

    assert isinstance(store, S3Store)
    keys = [o.key for o in store.list()]
    assert "pipelines/p1/stages/convert/staging/t-1/model.gguf" in keys
    raw = store.client.list_objects(store.bucket, prefix="team-a/", recursive=True)
    assert len(list(raw)) == len(keys)  # everything lives under the store's prefix

    assert verify_committed(store, manifest.key, deep=True) == manifest
    fetched = fetch_stage(store, manifest.key, tmp_path / "in")
    assert fetched.ref == manifest.ref
    assert (tmp_path / "in" / "model.gguf").read_bytes() == big_file.read_bytes()
    assert find_committed(store, manifest.cache_key) == manifest

    store.delete_prefix(layout.pipeline_prefix("p1"))
    assert find_committed(store, manifest.cache_key) is None


def test_interrupted_s3_commit_leaves_nothing_committed(
    store: S3Store, big_file: Path, tmp_path: Path
) -> None:
    faulty = FaultyStore(store, fail=lambda op, key: op == "put_bytes")
    with pytest.raises(Unavailable):
        commit_stage(
            faulty, _outputs(tmp_path / "out", big_file), pipeline="p1", stage="convert",
            attempt="t-1",
        )  # fmt: skip
    assert store.exists("pipelines/p1/stages/convert/staging/t-1/model.gguf")
    with pytest.raises(NotFound):
        read_manifest(store, layout.stage_manifest("p1", "convert"))


def test_store_cli_against_s3(s3_server: S3ServerProcess, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TUNESHIP_STORE": f"s3://cli-{uuid.uuid4().hex[:12]}/ops",
        "TUNESHIP_S3_ENDPOINT": s3_server.endpoint,
        "TUNESHIP_S3_ACCESS_KEY": s3_server.access_key,
        "TUNESHIP_S3_SECRET_KEY": s3_server.secret_key,
        "TUNESHIP_S3_SECURE": "0",
    }
    tuneship = str(Path(sys.executable).parent / "tuneship")
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": []}\n')

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tuneship, "store", *args], env=env, capture_output=True, text=True, timeout=60
        )

    put = json.loads(run("put", str(data), "--json").stdout)
    verified = json.loads(run("verify", put["key"], "--deep", "--json").stdout)
    listed = json.loads(run("ls", "inputs/", "--json").stdout)
    fetched = run("fetch", put["key"], str(tmp_path / "out"))
    missing = run("verify", "pipelines/none/manifest.json")

    assert verified["files"] == put["files"] and verified["verified"] == "deep"
    assert {o["key"] for o in listed} == {put["key"], put["root"] + "train.jsonl"}
    assert fetched.returncode == 0 and (tmp_path / "out" / "train.jsonl").exists()
    assert missing.returncode == 2 and "pipelines/none/manifest.json" in missing.stderr


def test_a_large_object_is_read_in_pieces_as_stored(store: S3Store, big_file: Path) -> None:
    store.put_file("pipelines/p/model.gguf", big_file)

    pieces = list(store.read_chunks("pipelines/p/model.gguf"))

    assert len(pieces) > 1 and all(0 < len(p) <= CHUNK for p in pieces)
    assert b"".join(pieces) == big_file.read_bytes()
    resumed = b"".join(store.read_chunks("pipelines/p/model.gguf", offset=5 * MiB + 7))
    assert resumed == big_file.read_bytes()[5 * MiB + 7 :]
    with pytest.raises(NotFound) as caught:  # before any piece: nothing to iterate
        store.read_chunks("pipelines/p/nope.gguf")
    assert "pipelines/p/nope.gguf" in str(caught.value)
