"""The controller over real gRPC: ordering, retries, limits, cancel, re-attach, Watch.

Stage workers are the real StageServicer on real gRPC servers; their work is scripted
(tuneship.testing.stages) so these tests finish in seconds. Every test runs once over
SQLite and once over a real PostgreSQL server (the ``state_url`` fixture).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tuneship.common.stages import STAGES
from tuneship.common.wire import stage_service
from tuneship.controller.app import ControllerSettings, start_controller
from tuneship.controller.scheduler import RetryPolicy
from tuneship.testing.cluster import Cluster, start_cluster, upload_nothing
from tuneship.testing.stages import ScriptedStage
from tuneship.v1 import pipeline_pb2, pipeline_pb2_grpc, workers_pb2

pytestmark = pytest.mark.integration

SPEC = """apiVersion: tuneship/v1
metadata: {{name: {name}}}
model: {{base: s3://models/tiny}}
dataset: {{train: s3://data/train.jsonl}}
"""


@pytest.fixture
def cluster_factory(tmp_path: Path, state_url: str) -> Iterator:
    made: list[Cluster] = []

    def make(**overrides) -> Cluster:
        stages = {name: ScriptedStage(name) for name in STAGES}
        stages.update(overrides.pop("stages", {}))
        options = {"capacity": {}, "state_url": state_url, **overrides}
        cluster = start_cluster(tmp_path, stages, **options)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def submit(cluster: Cluster, name: str, priority: int = 0) -> str:
    request = pipeline_pb2.SubmitRequest(spec_yaml=SPEC.format(name=name), priority=priority)
    return cluster.stub.Submit(request).id


def test_pipeline_runs_stages_in_order_and_chat_reaches_serving(cluster_factory) -> None:
    cluster = cluster_factory()
    pid = submit(cluster, "one")
    done = cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    assert [s.stage for s in done.stages] == list(STAGES)
    assert all(s.phase == pipeline_pb2.SUCCEEDED and s.attempts == 1 for s in done.stages)
    assert [s.started for s in done.stages] == sorted(s.started for s in done.stages)
    assert done.stages[1].outputs["merge"].key.endswith("merge/manifest.json")
    chunks = list(cluster.stub.Chat(pipeline_pb2.PipelineChatRequest(
        id=pid, messages=[workers_pb2.ChatMessage(role="user", content="ahoy")])))  # fmt: skip
    assert chunks[0].content == f"{pid}:latest heard ahoy" and chunks[-1].done


def test_transient_failures_are_retried_with_backoff(cluster_factory) -> None:
    flaky = ScriptedStage("merge", failures={1: "Unavailable", 2: "Busy"})
    cluster = cluster_factory(stages={"merge": flaky})
    pid = submit(cluster, "flaky")
    done = cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    merge = next(s for s in done.stages if s.stage == "merge")
    assert merge.attempts == 3
    assert flaky.calls == [f"{pid}.merge.1", f"{pid}.merge.2", f"{pid}.merge.3"]


def test_invalid_input_fails_at_once_and_retry_resumes_from_that_stage(cluster_factory) -> None:
    broken = ScriptedStage("export", failures={1: "InvalidInput"})
    cluster = cluster_factory(stages={"export": broken})
    pid = submit(cluster, "broken")
    failed = cluster.wait(pid, pipeline_pb2.FAILED)
    assert len(broken.calls) == 1
    assert "export" in failed.error and "InvalidInput" in failed.error
    train_calls = len(cluster.stages["train"].calls)
    cluster.stub.Retry(pipeline_pb2.RetryRequest(id=pid))
    done = cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    assert broken.calls == [f"{pid}.export.1", f"{pid}.export.2"]  # a new task, not a replay
    assert next(s for s in done.stages if s.stage == "export").attempts == 2
    assert len(cluster.stages["train"].calls) == train_calls  # finished stages are not rerun


def test_retry_of_a_running_pipeline_is_refused(cluster_factory) -> None:
    long_train = ScriptedStage("train", steps=200, step_s=0.05)
    cluster = cluster_factory(stages={"train": long_train})
    pid = submit(cluster, "busy")
    cluster.wait(pid, pipeline_pb2.RUNNING)
    with pytest.raises(grpc.RpcError) as caught:
        cluster.stub.Retry(pipeline_pb2.RetryRequest(id=pid))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is running: Retry applies to failed or cancelled" in caught.value.details()
    info = cluster.stub.Get(pipeline_pb2.GetRequest(id=pid))
    assert info.phase == pipeline_pb2.RUNNING  # untouched: training goes on
    assert info.stages[0].attempts == 1


def test_oversized_specs_and_labels_are_refused_and_list_pages_stay_small(
    cluster_factory,
) -> None:
    cluster = cluster_factory()
    huge = SPEC.format(name="huge") + f"# {'x' * (20 * 2**20)}\n"
    with pytest.raises(grpc.RpcError) as caught:
        cluster.stub.Submit(pipeline_pb2.SubmitRequest(spec_yaml=huge))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the most a spec may be is 262,144" in caught.value.details()
    label = SPEC.format(name="label").replace(
        "metadata: {name: label}", f"metadata: {{name: label, labels: {{note: {'y' * 300}}}}}"
    )
    with pytest.raises(grpc.RpcError) as caught:
        cluster.stub.Submit(pipeline_pb2.SubmitRequest(spec_yaml=label))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata.labels" in caught.value.details() and "at most 253" in caught.value.details()
    pid = submit(cluster, "listed")
    [listed] = cluster.stub.List(pipeline_pb2.ListRequest()).pipelines
    assert listed.id == pid and listed.spec_json == ""  # Get has it
    assert cluster.stub.Get(pipeline_pb2.GetRequest(id=pid)).spec_json


def test_a_worker_that_is_down_for_a_while_is_waited_for_not_counted(cluster_factory) -> None:
    cluster = cluster_factory()  # 3 attempts, backoff 0.05-0.2 s: spent in a second
    merge = cluster.workers[1]
    port = merge.port
    merge.stop(0)  # the merger restarts (a new pod, a rollout)
    pid = submit(cluster, "outage")
    time.sleep(4)
    during = cluster.stub.Get(pipeline_pb2.GetRequest(id=pid))
    assert during.phase == pipeline_pb2.RUNNING
    assert during.stages[1].attempts <= 1
    cluster.workers[1] = stage_service(cluster.servicers["merge"]).start(port=port)
    done = cluster.wait(pid, pipeline_pb2.SUCCEEDED, timeout_s=60)
    assert done.stages[1].attempts == 1  # the outage used no attempt
    assert cluster.stages["merge"].calls == [f"{pid}.merge.1"]
    texts = [e.message for e in cluster.stub.Watch(pipeline_pb2.WatchRequest(id=pid))]
    assert sum("merge workers unreachable" in t for t in texts) == 1  # said once


def test_workers_unreachable_past_the_limit_fail_the_stage_clearly(cluster_factory) -> None:
    cluster = cluster_factory(unreachable_s=1.5)
    cluster.workers[0].stop(0)
    pid = submit(cluster, "gone")
    failed = cluster.wait(pid, pipeline_pb2.FAILED, timeout_s=30)
    assert "no train worker answered for 2s" in failed.error  # 1.5 s, shown rounded
    assert failed.stages[0].attempts == 1


def test_concurrency_limits_are_respected_in_a_batch(cluster_factory) -> None:
    slow_train = ScriptedStage("train", steps=5, step_s=0.05)
    cluster = cluster_factory(
        stages={"train": slow_train},
        capacity={"train": 2, "merge": 1},
        limits={"train": 2, "merge": 1, "export": 1, "publish": 1},
    )
    batch = pipeline_pb2.SubmitBatchRequest(
        pipelines=[
            pipeline_pb2.SubmitRequest(spec_yaml=SPEC.format(name=f"b{i}")) for i in range(4)
        ]
    )
    ids = [p.id for p in cluster.stub.SubmitBatch(batch).pipelines]
    for pid in ids:
        cluster.wait(pid, pipeline_pb2.SUCCEEDED, timeout_s=30)
    assert slow_train.peak == 2  # observed on the worker: two at once, never three
    assert cluster.servicers["train"].tasks.peak_running == 2
    assert cluster.stages["merge"].peak == 1


def test_batch_with_a_bad_spec_creates_nothing(cluster_factory) -> None:
    cluster = cluster_factory()
    good = pipeline_pb2.SubmitRequest(spec_yaml=SPEC.format(name="ok"))
    bad = pipeline_pb2.SubmitRequest(spec_yaml="apiVersion: tuneship/v1\nmetadata: {name: x}\n")
    with pytest.raises(grpc.RpcError) as caught:
        cluster.stub.SubmitBatch(pipeline_pb2.SubmitBatchRequest(pipelines=[good, bad]))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "pipelines[1]" in caught.value.details() and "model" in caught.value.details()
    assert len(cluster.stub.List(pipeline_pb2.ListRequest()).pipelines) == 0


def test_cancel_stops_the_running_stage(cluster_factory) -> None:
    long_train = ScriptedStage("train", steps=400, step_s=0.05)
    cluster = cluster_factory(stages={"train": long_train})
    pid = submit(cluster, "cancel-me")
    cluster.wait(pid, pipeline_pb2.RUNNING)
    while not long_train.calls:
        time.sleep(0.02)
    time.sleep(0.2)
    cluster.stub.Cancel(pipeline_pb2.CancelPipelineRequest(id=pid))
    cancelled = cluster.wait(pid, pipeline_pb2.CANCELLED)
    task = cluster.servicers["train"].tasks.get(f"{pid}.train.1")
    deadline = time.monotonic() + 5
    while task.state.value == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert task.state.value == "cancelled"  # the worker stopped it, not just the controller
    assert cancelled.stages[1].phase == pipeline_pb2.CANCELLED
    assert not cluster.stages["merge"].calls


def test_controller_restart_reattaches_instead_of_duplicating(cluster_factory) -> None:
    slow_train = ScriptedStage("train", steps=20, step_s=0.05)
    cluster = cluster_factory(stages={"train": slow_train})
    pid = submit(cluster, "restart")
    while sum(e.kind == "progress" for e in cluster.controller.state.events(pid)) < 5:
        time.sleep(0.02)
    cluster.controller.stop()  # the worker keeps running its task
    settings = ControllerSettings(
        state_url=cluster.state_url,
        workers={s: p.address() for s, p in cluster.controller.workers.providers.items()},
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.05),
    )
    cluster.controller = start_controller(settings, upload_nothing)
    cluster.stub = pipeline_pb2_grpc.PipelineServiceStub(
        grpc.insecure_channel(cluster.controller.address)
    )
    done = cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    assert slow_train.calls == [f"{pid}.train.1"]  # re-attached by task_id: one run only
    assert done.stages[0].attempts == 1
    # The worker replays its task to a re-attaching controller from where it left off:
    # every training step is in the log once, not again from step 1.
    events = list(cluster.stub.Watch(pipeline_pb2.WatchRequest(id=pid)))
    steps = [
        e.stage_event.progress.step
        for e in events
        if e.stage_event.stage == "train" and e.stage_event.WhichOneof("kind") == "progress"
    ]
    assert steps == list(range(1, 21))


def test_watch_joined_late_replays_everything_in_order(cluster_factory) -> None:
    cluster = cluster_factory()
    pid = submit(cluster, "watched")
    cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    events = list(cluster.stub.Watch(pipeline_pb2.WatchRequest(id=pid), timeout=10))
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and seqs[0] == 1
    messages = [e.message for e in events if e.message]
    assert messages[0] == "submitted" and messages[-1] == "pipeline succeeded"
    progress = [e.stage_event for e in events if e.stage_event.WhichOneof("kind") == "progress"]
    assert {p.stage for p in progress} == set(STAGES)
    tail = list(
        cluster.stub.Watch(pipeline_pb2.WatchRequest(id=pid, after_seq=seqs[-2]), timeout=10)
    )
    assert [e.seq for e in tail] == [seqs[-1]]


def test_silent_worker_hits_the_heartbeat_timeout(cluster_factory) -> None:
    stalled = ScriptedStage("train", steps=1, step_s=0.0)
    cluster = cluster_factory(stages={"train": stalled}, heartbeat_s=1.0, capacity={"train": 2})
    for servicer in cluster.servicers.values():
        servicer.keepalive_s = 30  # no keepalives: a silent stream
    original = stalled._work

    def hang_first(job, sink):
        if job.attempt == 1:
            time.sleep(3)
        return original(job, sink)

    stalled._work = hang_first  # type: ignore[method-assign]
    pid = submit(cluster, "silent")
    done = cluster.wait(pid, pipeline_pb2.SUCCEEDED, timeout_s=30)
    assert done.stages[0].attempts == 2


def test_errors_carry_status_codes(cluster_factory) -> None:
    cluster = cluster_factory()
    with pytest.raises(grpc.RpcError) as missing:
        cluster.stub.Get(pipeline_pb2.GetRequest(id="nope"))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    pid = submit(cluster, "done")
    cluster.wait(pid, pipeline_pb2.SUCCEEDED)
    with pytest.raises(grpc.RpcError) as illegal:
        cluster.stub.Cancel(pipeline_pb2.CancelPipelineRequest(id=pid))
    assert illegal.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as purge:
        cluster.stub.Delete(pipeline_pb2.DeleteRequest(id=pid, purge_artifacts=True))
    assert purge.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    cluster.stub.Delete(pipeline_pb2.DeleteRequest(id=pid))
    with pytest.raises(grpc.RpcError):
        cluster.stub.Get(pipeline_pb2.GetRequest(id=pid))


def test_every_server_answers_health_checks_and_reflection(cluster_factory) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    cluster = cluster_factory()
    addresses = [cluster.controller.address, *(w.address for w in cluster.workers)]
    services = set()
    for address in addresses:
        channel = grpc.insecure_channel(address)
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [answer] = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([request])
        )
        services |= {s.name for s in answer.list_services_response.service}
    assert {
        "tuneship.v1.PipelineService", "tuneship.v1.TrainerService", "tuneship.v1.MergerService",
        "tuneship.v1.ConverterService", "tuneship.v1.ServingService",
    } <= services  # fmt: skip


def test_worker_reattaches_by_task_id_and_refuses_work_beyond_capacity(cluster_factory) -> None:
    from tuneship.v1 import stage_pb2, workers_pb2_grpc

    slow = ScriptedStage("train", steps=40, step_s=0.02)
    cluster = cluster_factory(stages={"train": slow})
    stub = workers_pb2_grpc.TrainerServiceStub(grpc.insecure_channel(cluster.workers[0].address))
    request = stage_pb2.StageRequest(task_id="t-1", pipeline="p", spec_json="{}")
    first = stub.Train(request)
    next(iter(first))  # running
    with pytest.raises(grpc.RpcError) as busy:
        list(stub.Train(stage_pb2.StageRequest(task_id="t-2", pipeline="p", spec_json="{}")))
    assert busy.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    again = [e for e in stub.Train(request) if e.seq]  # the same id: attach, replay, follow
    assert again[-1].WhichOneof("kind") == "result"
    assert [e.seq for e in again] == list(range(1, len(again) + 1))
    assert slow.calls == ["t-1"]  # one run, two streams
    with pytest.raises(grpc.RpcError) as invalid:
        list(stub.Train(stage_pb2.StageRequest(pipeline="p", spec_json="{}")))
    assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "task_id" in invalid.value.details()


def test_prometheus_metrics_report_phases_queues_durations_and_throughput(cluster_factory) -> None:
    import urllib.request

    from tuneship.common.llama_server import free_port

    slow_train = ScriptedStage("train", steps=30, step_s=0.05)
    cluster = cluster_factory(stages={"train": slow_train})
    server = cluster.controller.metrics.serve("127.0.0.1", port := free_port())

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            return answer.read().decode()

    try:
        first, second = submit(cluster, "m1"), submit(cluster, "m2")
        deadline = time.monotonic() + 10
        while 'tuneship_training_tokens_per_second{pipeline="' not in scrape():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        during = scrape()
        assert 'tuneship_stage_running{stage="train"} 1.0' in during
        assert 'tuneship_stage_queue_depth{stage="train"} 1.0' in during  # limit 1: one waits
        assert 'tuneship_pipelines{phase="running"}' in during
        for pid in (first, second):
            cluster.wait(pid, pipeline_pb2.SUCCEEDED, timeout_s=30)
        after = scrape()
        assert 'tuneship_pipelines{phase="succeeded"} 2.0' in after
        assert (
            'tuneship_stage_duration_seconds_count{outcome="succeeded",stage="train"} 2.0' in after
        )
        assert 'tuneship_stage_queue_depth{stage="train"} 0.0' in after
        assert "tuneship_training_tokens_per_second{" not in after  # finished trainings leave
    finally:
        server.shutdown()
