"""`tuneship submit` with local inputs and no store of its own: the model directory and
the dataset go through the controller (the cluster's MinIO is rarely reachable from a
laptop), land under the keys a direct upload gives, and are not sent twice."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from tuneship.client import PipelineClient
from tuneship.common.manifest import scan_dir
from tuneship.common.stages import STAGES
from tuneship.common.store import LocalStore
from tuneship.common.store.commit import upload_input, verify_committed
from tuneship.controller.app import Controller, ControllerSettings, start_controller
from tuneship.controller.inputs import UploadSettings, input_uploader
from tuneship.testing.cluster import Cluster, start_cluster
from tuneship.testing.stages import ScriptedStage
from tuneship.testing.stores import FaultyStore
from tuneship.v1 import pipeline_pb2, pipeline_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
TUNESHIP = str(Path(sys.executable).parent / "tuneship")
SPEC = """apiVersion: tuneship/v1
metadata: {name: uploaded}
model: {base: ./model}
dataset: {train: ./train.jsonl}
"""


@dataclass
class Uploads:
    """A controller whose inputs go to ``store`` (recorded), scratch space under ``scratch``."""

    cluster: Cluster
    controller: Controller
    store: FaultyStore
    root: Path
    scratch: Path

    @property
    def address(self) -> str:
        return self.controller.address

    def uploads(self) -> list[str]:
        return [key for op, key in self.store.calls if op.startswith("put_")]


def controller_with_uploads(tmp_path: Path, cluster: Cluster, max_bytes: int) -> Uploads:
    root, scratch = tmp_path / "controller-store", tmp_path / "scratch"
    scratch.mkdir()
    store = FaultyStore(LocalStore(root))
    settings = ControllerSettings(
        state_url=f"sqlite:///{tmp_path / 'uploads-state.db'}",
        workers={name: w.address for name, w in zip(STAGES, cluster.workers, strict=True)},
    )
    uploader = input_uploader(store, UploadSettings(max_bytes=max_bytes, scratch_dir=scratch))
    return Uploads(cluster, start_controller(settings, uploader), store, root, scratch)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Scripted stage workers and a controller that takes no uploads (``upload_nothing``)."""
    running = start_cluster(tmp_path, {name: ScriptedStage(name) for name in STAGES}, {})
    yield running
    running.stop()


@pytest.fixture
def uploads(tmp_path: Path, cluster: Cluster) -> Iterator[Uploads]:
    made = controller_with_uploads(tmp_path, cluster, max_bytes=1 << 30)
    yield made
    made.controller.stop()


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A spec beside a small model directory (nested, an empty file, a multi-chunk file)
    and a dataset file, as a user has them."""
    model = tmp_path / "work" / "model"
    (model / "tokenizer").mkdir(parents=True)
    (model / "config.json").write_text('{"hidden_size": 256}\n')
    (model / "tokenizer" / "tokenizer.json").write_text('{"model": {"type": "BPE"}}\n')
    (model / "added_tokens.txt").write_bytes(b"")
    (model / "model.safetensors").write_bytes(bytes(range(251)) * 10_000)  # 2.4 MiB
    (tmp_path / "work" / "train.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"
    )
    spec = tmp_path / "work" / "spec.yaml"
    spec.write_text(SPEC)
    return spec


def submit(address: str, spec: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TUNESHIP, "submit", str(spec), "--json", "--controller", address],
        capture_output=True, text=True, timeout=120,
        env={"COLUMNS": "200", "PATH": "", **env},  # no TUNESHIP_STORE unless given
    )  # fmt: skip


def direct_keys(tmp_path: Path, work: Path) -> dict[str, str]:
    """The keys `tuneship store put` (a direct upload) gives the same inputs."""
    store = LocalStore(tmp_path / "direct-store")
    return {
        "model.base": upload_input(store, work / "model", kind="model").key,
        "dataset.train": upload_input(store, work / "train.jsonl", kind="dataset").key,
    }


def spec_locations(address: str, pipeline_id: str) -> dict[str, str]:
    spec = json.loads(PipelineClient(address).get_spec(pipeline_id))
    return {"model.base": spec["model"]["base"], "dataset.train": spec["dataset"]["train"]}


def test_submit_uploads_through_the_controller_once(
    uploads: Uploads, inputs: Path, tmp_path: Path
) -> None:
    first = submit(uploads.address, inputs)
    assert first.returncode == 0, first.stderr
    for index, name in enumerate(
        ["added_tokens.txt", "config.json", "model.safetensors", "tokenizer/tokenizer.json"], 1
    ):
        assert f"model.base: uploading {name} " in first.stderr and f"[{index}/4]" in first.stderr
    assert "dataset.train: uploading train.jsonl" in first.stderr
    assert first.stderr.count("through the controller as inputs/") == 2

    pipeline_id = json.loads(first.stdout)["id"]
    expected = direct_keys(tmp_path, inputs.parent)
    assert spec_locations(uploads.address, pipeline_id) == {
        field: f"store:{key}" for field, key in expected.items()
    }
    store = LocalStore(uploads.root)
    for key in expected.values():
        verify_committed(store, key, deep=True)  # every file re-hashed against its manifest
    uploads.cluster.stub = pipeline_pb2_grpc.PipelineServiceStub(
        grpc.insecure_channel(uploads.address)
    )
    uploads.cluster.wait(pipeline_id, pipeline_pb2.SUCCEEDED)
    assert not list(uploads.scratch.iterdir())

    stored_before = uploads.uploads()
    second = submit(uploads.address, inputs)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("is already in the store as inputs/") == 2
    assert "uploading" not in second.stderr
    assert uploads.uploads() == stored_before  # not one byte stored again
    assert spec_locations(uploads.address, json.loads(second.stdout)["id"]) == spec_locations(
        uploads.address, pipeline_id
    )


def test_a_direct_upload_and_one_through_the_controller_are_the_same_input(
    uploads: Uploads, inputs: Path
) -> None:
    direct = submit(uploads.address, inputs, TUNESHIP_STORE=f"local:{uploads.root}")
    assert direct.returncode == 0, direct.stderr
    assert "through the controller" not in direct.stderr
    assert direct.stderr.count("uploaded ") == 2
    assert not uploads.uploads()  # the client wrote to the store itself

    through = submit(uploads.address, inputs)
    assert through.returncode == 0, through.stderr
    assert through.stderr.count("is already in the store") == 2
    assert not uploads.uploads()


def test_refusals_say_which_store_put_to_run(
    cluster: Cluster, tmp_path: Path, inputs: Path
) -> None:
    model = inputs.parent / "model"
    unsupported = submit(cluster.controller.address, inputs)  # upload_nothing: no uploads
    assert unsupported.returncode == 2
    assert "takes no uploads (UNIMPLEMENTED)" in unsupported.stderr
    assert f"tuneship store put {model} --kind model" in unsupported.stderr

    small = controller_with_uploads(tmp_path, cluster, max_bytes=100_000)
    try:
        too_big = submit(small.address, inputs)
    finally:
        small.controller.stop()
    assert too_big.returncode == 2
    assert "model.base: the controller did not take" in too_big.stderr
    assert "2.4 MiB; this controller takes uploads of at most 97.7 KiB" in too_big.stderr
    assert f"tuneship store put {model} --kind model" in too_big.stderr
    assert not small.uploads()  # refused before any byte was sent


def test_an_interrupted_upload_leaves_no_manifest(uploads: Uploads, inputs: Path) -> None:
    model = inputs.parent / "model"
    client = PipelineClient(uploads.address)
    stub = pipeline_pb2_grpc.PipelineServiceStub(grpc.insecure_channel(uploads.address))
    weights = (model / "model.safetensors").read_bytes()
    header = pipeline_pb2.InputHeader(kind="model", field="model.base", name=str(model))
    for entry in scan_dir(model):
        header.files.add(name=entry.name, size=entry.size, sha256=entry.sha256)
    halfway = threading.Event()
    hang = threading.Event()

    def chunks() -> Iterator[pipeline_pb2.UploadChunk]:
        yield pipeline_pb2.UploadChunk(header=header, path="added_tokens.txt")
        config = (model / "config.json").read_bytes()
        yield pipeline_pb2.UploadChunk(path="config.json", data=config)
        yield pipeline_pb2.UploadChunk(path="model.safetensors", data=weights[: 1 << 20])
        halfway.set()
        hang.wait(30)  # the client dies here (Ctrl-C, a dropped connection)

    call = stub.UploadInput.future(chunks())
    assert halfway.wait(10)
    time.sleep(0.3)  # the server has taken the chunks sent so far
    call.cancel()
    hang.set()
    deadline = time.monotonic() + 10
    while list(uploads.scratch.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(uploads.scratch.iterdir())  # the half-received file is gone
    store = LocalStore(uploads.root)
    assert not [i.key for i in store.list("") if i.key.endswith("manifest.json")]
    assert not stub.FindInput(header).already_stored

    again = client.upload_input(model, "model", "model.base")  # the retry commits it whole
    assert not again.already_stored
    verify_committed(store, again.key, deep=True)
