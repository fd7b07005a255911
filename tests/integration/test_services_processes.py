"""Every service as its own process on loopback, artifacts in a real S3 server, SQLite
state: what a cluster does, on one machine.

One batch of three real (tiny) pipelines runs through `tuneship serve COMPONENT`
processes; every committed artifact is re-hashed from S3; the stage intervals the
controller recorded show the concurrency limits held; a cancelled pipeline's training
is stopped on the trainer process itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tuneship.client import PipelineClient, PipelineInfo
from tuneship.common.llama_server import free_port
from tuneship.common.stages import PIPELINE
from tuneship.common.store import S3Store
from tuneship.common.store.commit import verify_committed
from tuneship.v1 import stage_pb2, workers_pb2_grpc

pytestmark = pytest.mark.integration
TUNESHIP = str(Path(sys.executable).parent / "tuneship")
COMPONENTS = {s.component: s.name for s in PIPELINE}
LIMITS = {"train": 2, "merge": 1, "export": 1, "publish": 1}

SPEC = """apiVersion: tuneship/v1
metadata: {{name: {name}}}
model: {{base: {base}}}
dataset: {{train: {data}/train.jsonl, eval: {data}/eval.jsonl}}
train: {{max_steps: {steps}, save_steps: 4, learning_rate: 0.003}}
export: {{quant_types: [q8_0]}}
serve: {{smoke_prompts: []}}
"""


def wait_healthy(address: str, process: subprocess.Popen[bytes], log: Path) -> None:
    channel = grpc.insecure_channel(address)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{log.name} exited:\n{log.read_text()[-2000:]}"
        try:
            grpc.channel_ready_future(channel).result(timeout=1)
            break
        except grpc.FutureTimeoutError:
            continue
    channel.close()


@pytest.fixture
def cluster(s3_server, tmp_path: Path) -> Iterator[dict]:
    bucket = f"tuneship-{int(time.time() * 1000) % 10**9}"
    env = {
        **os.environ,
        "TUNESHIP_STORE": f"s3://{bucket}",
        "TUNESHIP_S3_ENDPOINT": s3_server.endpoint,
        "TUNESHIP_S3_ACCESS_KEY": s3_server.access_key,
        "TUNESHIP_S3_SECRET_KEY": s3_server.secret_key,
        "TUNESHIP_S3_SECURE": "0",
        "TUNESHIP_SERVING_BACKEND": "llama-server",
        "TUNESHIP_DATA_DIR": str(tmp_path / "controller"),
    }
    ports = {name: free_port() for name in [*COMPONENTS, "controller"]}
    processes: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    for component, stage in COMPONENTS.items():
        own = {**env, "TUNESHIP_WORK_DIR": str(tmp_path / component),
               "TUNESHIP_CAPACITY": str(LIMITS[stage])}  # fmt: skip
        processes.append(serve(component, ports[component], own, logs))
    workers = ",".join(f"{stage}=127.0.0.1:{ports[c]}" for c, stage in COMPONENTS.items())
    limits = ",".join(f"{k}={v}" for k, v in LIMITS.items())
    metrics_port = free_port()
    controller_env = {**env, "TUNESHIP_WORKERS": workers, "TUNESHIP_LIMITS": limits,
                      "TUNESHIP_METRICS_PORT": str(metrics_port)}  # fmt: skip
    processes.append(serve("controller", ports["controller"], controller_env, logs))
    try:
        for (name, port), process in zip(ports.items(), processes, strict=True):
            wait_healthy(f"127.0.0.1:{port}", process, logs / f"{name}.log")
        store = S3Store(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, bucket,
                        secure=False)  # fmt: skip
        yield {"env": env, "ports": ports, "store": store, "logs": logs, "metrics": metrics_port,
               "client": PipelineClient(f"127.0.0.1:{ports['controller']}")}  # fmt: skip
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def serve(component: str, port: int, env: dict, logs: Path) -> subprocess.Popen[bytes]:
    log = (logs / f"{component}.log").open("wb")
    return subprocess.Popen(
        [TUNESHIP, "serve", component, "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def write_spec(tmp_path: Path, name: str, base: Path, data: Path, steps: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, base=base, data=data, steps=steps))
    return path


def wait_for(
    client: PipelineClient, pipeline_id: str, phases: set[str], timeout_s: float
) -> PipelineInfo:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = client.get(pipeline_id)
        if info.phase in phases:
            return info
        time.sleep(0.5)
    raise AssertionError(f"{pipeline_id} is still {info.phase}: {info.as_dict()}")


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in points:
        running += step
        peak = max(peak, running)
    return peak


def submit(cluster: dict, specs: list[Path]) -> list[str]:
    done = subprocess.run(
        [TUNESHIP, "submit", *map(str, specs), "--controller",
         f"127.0.0.1:{cluster['ports']['controller']}"],
        env=cluster["env"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return [line.split("\t")[0] for line in done.stdout.splitlines() if "\t" in line]


def test_batch_of_three_in_separate_processes_with_s3(
    cluster: dict, tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    client: PipelineClient = cluster["client"]
    specs = [write_spec(tmp_path, f"batch-{i}", tiny_chatml, sample_data / "pirate", 6)
             for i in range(3)]  # fmt: skip
    ids = submit(cluster, specs)
    assert len(ids) == 3
    finals = [wait_for(client, pid, {"succeeded", "failed"}, 600) for pid in ids]
    assert [f.phase for f in finals] == ["succeeded"] * 3, [f.as_dict() for f in finals]

    for final in finals:  # every committed artifact is in S3 and re-hashes to its manifest
        for stage in final.stages:
            manifest = verify_committed(cluster["store"], stage.outputs[stage.name], deep=True)
            assert manifest.files
        assert final.stage("publish").summary["model"].startswith(final.name)

    # Concurrency as it happened: the stage intervals the controller recorded.
    for stage, limit in LIMITS.items():
        spans = [(f.stage(stage).started, f.stage(stage).finished) for f in finals]
        assert most_at_once(spans) <= limit, (stage, spans)
    train_spans = [(f.stage("train").started, f.stage("train").finished) for f in finals]
    assert most_at_once(train_spans) == 2  # the limit was reached, and held

    url = f"http://127.0.0.1:{cluster['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        metrics = answer.read().decode()
    assert 'tuneship_pipelines{phase="succeeded"} 3.0' in metrics
    assert (
        'tuneship_stage_duration_seconds_count{outcome="succeeded",stage="export"} 3.0' in metrics
    )


def test_cancel_stops_training_on_the_trainer_process(
    cluster: dict, tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    client: PipelineClient = cluster["client"]
    [pid] = submit(
        cluster, [write_spec(tmp_path, "long", tiny_chatml, sample_data / "pirate", 5000)]
    )
    for event in client.watch(pid):
        if event.kind == "progress" and event.stage == "train" and event.data["unit"] == "steps":
            break
    client.cancel(pid)
    wait_for(client, pid, {"cancelled"}, 60)
    deadline = time.monotonic() + 60
    while client.get(pid).stage("train").phase == "running" and time.monotonic() < deadline:
        time.sleep(0.2)  # the worker stops at its next step, then the stream ends
    assert client.get(pid).stage("train").phase == "cancelled"
    # Ask the trainer process itself: re-attaching to the task ends with CANCELLED.
    channel = grpc.insecure_channel(f"127.0.0.1:{cluster['ports']['trainer']}")
    stub = workers_pb2_grpc.TrainerServiceStub(channel)
    request = stage_pb2.StageRequest(task_id=f"{pid}.train.1", pipeline=pid, spec_json="{}")
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Train(request, timeout=60))
    assert caught.value.code() is grpc.StatusCode.CANCELLED
