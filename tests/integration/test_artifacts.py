"""A pipeline's committed files through the controller: ``ListArtifacts``,
``ReadArtifact``, the client's ``download`` and ``tuneship artifacts``.

The stages are scripted but commit real files with the real commit code into a real
directory store; the controller, its gRPC server and the client are the real ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuneship.client import PipelineClient
from tuneship.common.errors import FailedPrecondition, InvalidInput, NotFound
from tuneship.common.stages import STAGES
from tuneship.common.store import CorruptArtifact, LocalStore
from tuneship.testing.cluster import Cluster, start_cluster
from tuneship.testing.console import FILES, console_stages
from tuneship.v1 import pipeline_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
TUNESHIP = str(Path(sys.executable).parent / "tuneship")
SPEC = """apiVersion: tuneship/v1
metadata: {name: files}
model: {base: s3://models/tiny}
dataset: {train: s3://data/train.jsonl}
"""


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def cluster(tmp_path: Path, store: LocalStore) -> Iterator[Cluster]:
    running = start_cluster(tmp_path, console_stages(store), {}, store=store)
    yield running
    running.stop()


def finished(cluster: Cluster) -> tuple[PipelineClient, str]:
    client = PipelineClient(cluster.controller.address)
    pipeline_id = client.submit(SPEC).id
    cluster.wait(pipeline_id, pipeline_pb2.SUCCEEDED)
    return client, pipeline_id


def test_every_committed_file_is_listed_with_its_size_and_sha256(cluster: Cluster) -> None:
    client, pipeline_id = finished(cluster)

    listed = client.artifacts(pipeline_id)

    expected = [
        (stage, f"{stage}/{path}", len(data), hashlib.sha256(data).hexdigest())
        for stage in STAGES for path, data in sorted(FILES[stage].items())
    ]  # fmt: skip
    assert [(f.stage, f.name, f.size, f.sha256) for f in listed] == expected


def test_a_file_downloads_whole_in_pieces_and_verified(cluster: Cluster, tmp_path: Path) -> None:
    client, pipeline_id = finished(cluster)
    gguf = FILES["export"]["pirate-q8_0.gguf"]

    transfer = client.read_artifact(pipeline_id, "export", "pirate-q8_0.gguf")
    pieces = list(transfer)
    got = client.download(pipeline_id, "export", "pirate-q8_0.gguf", tmp_path / "out.gguf")

    assert transfer.file.size == len(gguf) and len(pieces) == 3  # 1 MiB pieces
    assert b"".join(pieces) == gguf == (tmp_path / "out.gguf").read_bytes()
    assert got.sha256 == hashlib.sha256(gguf).hexdigest()
    assert list(tmp_path.glob(".out.gguf*")) == []  # no temporary file left

    resumed = client.read_artifact(pipeline_id, "export", "pirate-q8_0.gguf", offset=2_000_000)
    assert b"".join(resumed) == gguf[2_000_000:]
    assert b"".join(client.read_artifact(pipeline_id, "export", "report.md", offset=39)) == b""
    with pytest.raises(InvalidInput) as caught:
        client.read_artifact(pipeline_id, "export", "report.md", offset=40)
    assert "ReadArtifactRequest.offset" in str(caught.value) and "0 to 39" in str(caught.value)


def test_only_files_the_manifests_list_can_be_read(cluster: Cluster, store: LocalStore) -> None:
    client, pipeline_id = finished(cluster)
    for stage, path, where in (
        ("export", "manifest.json", "ReadArtifactRequest.path"),
        ("export", "../train/adapter_model.safetensors", "ReadArtifactRequest.path"),
        ("export", "../../../../state.db", "ReadArtifactRequest.path"),
        ("deploy", "report.md", "ReadArtifactRequest.stage"),
    ):
        with pytest.raises(NotFound) as caught:
            client.read_artifact(pipeline_id, stage, path)
        assert where in str(caught.value), caught.value
    with pytest.raises(NotFound) as caught:
        client.read_artifact(pipeline_id, "deploy", "report.md")
    assert "train, merge, export, publish" in str(caught.value)
    with pytest.raises(NotFound):
        client.artifacts("p-nope")


def test_a_damaged_copy_fails_the_download_and_writes_nothing(
    cluster: Cluster, store: LocalStore, tmp_path: Path
) -> None:
    client, pipeline_id = finished(cluster)
    stored = next(f for f in store.list("pipelines/") if f.key.endswith("report.md"))
    damaged = store.root / stored.key
    damaged.write_bytes(damaged.read_bytes().replace(b"q8_0", b"q4_0"))  # same size

    with pytest.raises(CorruptArtifact) as caught:
        client.download(pipeline_id, "export", "report.md", tmp_path / "report.md")

    assert "retry the export stage" in str(caught.value)
    assert list(tmp_path.glob("*report.md*")) == []


def test_a_controller_without_a_store_says_so(tmp_path: Path) -> None:
    running = start_cluster(tmp_path, console_stages(), {})
    try:
        client = PipelineClient(running.controller.address)
        pipeline_id = client.submit(SPEC).id
        with pytest.raises(FailedPrecondition) as caught:
            client.artifacts(pipeline_id)
        assert "no artifact store" in str(caught.value)
        # The server's hint arrives apart from its message, as it was raised there.
        assert caught.value.hint == "read them from the store itself (`tuneship store`)"
        assert "hint" not in caught.value.message
    finally:
        running.stop()


def cli(cluster: Cluster, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TUNESHIP, "artifacts", *args, "--controller", cluster.controller.address],
        capture_output=True, text=True, timeout=60, cwd=cwd,
        env={"COLUMNS": "200", "PATH": "", "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    )  # fmt: skip


def test_the_cli_lists_and_downloads(cluster: Cluster, tmp_path: Path) -> None:
    _client, pipeline_id = finished(cluster)

    listed = cli(cluster, pipeline_id, cwd=tmp_path)
    as_json = json.loads(cli(cluster, pipeline_id, "--json", cwd=tmp_path).stdout)
    got = cli(cluster, pipeline_id, "--get", "export/report.md", cwd=tmp_path)
    typo = cli(cluster, pipeline_id, "--get", "export/reprot.md", cwd=tmp_path)

    assert listed.returncode == 0, listed.stderr
    assert "export/pirate-q8_0.gguf" in listed.stdout and "2.2 MiB" in listed.stdout
    assert {f["name"] for f in as_json} == {
        f"{stage}/{path}" for stage in STAGES for path in FILES[stage]
    }
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "report.md").read_bytes() == FILES["export"]["report.md"]
    assert "wrote report.md (" in got.stdout
    assert typo.returncode != 0
    assert "did you mean export/report.md?" in typo.stderr and "Traceback" not in typo.stderr
