"""tuneship on Kubernetes, as the chart installs it, against the shared fake API server.

Every process is real: the controller (``tuneship serve controller`` with the chart's
environment), each training attempt's Job pod (``tuneship serve trainer --once``) and the
pools' pods, started by the fake kubelet on their own loopback IPs. The requests the
controller makes are checked against the Role the chart renders.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuneship.client import PipelineClient, PipelineInfo
from tuneship.common.manifest import Manifest
from tuneship.common.store.local import LocalStore
from tuneship.controller.providers.kube import TASK_ANNOTATION
from tuneship.testing.helm import render
from tuneship.testing.kubecluster import (
    TEST_VALUES,
    TUNESHIP,
    ChartCluster,
    Followed,
    deploy_chart,
    write_spec,
)

pytestmark = pytest.mark.e2e

REQUESTED: set[tuple[str, str, str]] = set()
"""Every (apiGroup, resource, verb) the controller asked for, over this module's tests."""


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator:
    started: list[ChartCluster] = []

    def factory(**kwargs) -> ChartCluster:
        cluster = deploy_chart(tmp_path / f"cluster{len(started)}", **kwargs)
        started.append(cluster)
        return cluster

    yield factory
    for cluster in started:
        REQUESTED.update(cluster.kube.requested_rules("controller"))
        denied = [r for r in cluster.kube.requests if r.token == "controller" and not r.allowed]
        cluster.stop()
        assert denied == [], f"the chart's Role refused the controller: {denied}"
        assert cluster.kube.controller_errors == []


def wait(
    client: PipelineClient, pid: str, done, timeout_s: float = 300, what: str = ""
) -> PipelineInfo:
    deadline = time.monotonic() + timeout_s
    info = client.get(pid)
    while not done(info):
        if time.monotonic() > deadline:
            raise AssertionError(f"{pid} never reached {what or done}: {info}")
        time.sleep(0.25)
        info = client.get(pid)
    return info


def pirate_spec(path: Path, base: Path, sample_data: Path) -> Path:
    return write_spec(path, base, sample_data / "pirate")


def finished(info: PipelineInfo) -> bool:
    return info.phase in ("succeeded", "failed", "cancelled")


def jobs_of(cluster: ChartCluster, stage: str) -> list[dict]:
    return [j for j in cluster.kube.jobs() if j["metadata"]["name"].startswith(f"ts-{stage}-")]


def test_a_pipeline_runs_through_job_pods_and_pools_and_waits_in_the_kueue_queue(
    cluster_factory, tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    cluster = cluster_factory(values={"kueue": {"queueName": "gpu"}}, kueue_hold=True)
    client = cluster.start_controller()
    spec = write_spec(tmp_path / "k8s-pipeline.yaml", tiny_chatml, sample_data / "pirate")
    started = time.monotonic()
    pid = client.submit(spec).id

    # Kueue's own reason, from its event: the controller asks for it every 15 s while
    # queued, so the first queued line may come before the event does.
    queued = wait(client, pid, lambda i: i.stage("train").shown_phase == "queued"
                  and "insufficient quota" in i.stage("train").waiting, 60, "queued")  # fmt: skip
    train = queued.stage("train")
    assert "Kueue has not admitted job ts-train-" in train.waiting
    [job] = jobs_of(cluster, "train")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["annotations"][TASK_ANNOTATION] == f"{pid}.train.1"
    time.sleep(3)  # longer than nothing: no heartbeat timeout while queued
    assert client.get(pid).stage("train").attempts == 1
    cluster.kube.admit(job["metadata"]["name"])

    done = wait(client, pid, finished, 600)
    seconds = time.monotonic() - started
    assert done.phase == "succeeded", (done, cluster.controller_log()[-3000:])
    print(f"\npipeline through Job pods and pools: {seconds:.1f}s")
    assert [s.attempts for s in done.stages] == [1, 1, 1, 1]
    events = [e.text for e in client.watch(pid) if e.kind == "transition"]
    assert any(t.startswith("train queued: Kueue has not admitted") for t in events)
    # One Job for the one attempt; its pod served exactly that task and exited 0.
    [job] = jobs_of(cluster, "train")
    status = cluster.kube.get("Job", job["metadata"]["name"])["status"]
    assert status.get("succeeded") == 1
    # The published model answers through the controller (serving pool pod).
    pieces = client.chat_pieces(pid, [{"role": "user", "content": "Where is the treasure?"}])
    assert "".join(text for text, _ in pieces).strip()


def train_pod(cluster: ChartCluster) -> dict:
    """The running pod of the (only) train Job that has one."""
    return cluster.kube.wait_for(
        lambda: next(
            (p for p in cluster.kube.pods("tuneship.dev/stage=train")
             if (p.get("status") or {}).get("phase") == "Running"), None,
        ),
        60, "a running train pod",
    )  # fmt: skip


def test_a_controller_killed_mid_training_reattaches_to_the_same_job(
    cluster_factory, tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    cluster = cluster_factory()
    client = cluster.start_controller()
    pid = client.submit(
        write_spec(tmp_path / "restart.yaml", tiny_chatml, sample_data / "pirate")
    ).id
    followed = Followed(client, pid)
    followed.wait_for(lambda e: e.kind == "metrics" and e.stage == "train", what="training")
    cluster.kill_controller()  # SIGKILL: the Job and its pod carry on
    client = cluster.start_controller()
    done = wait(client, pid, finished, 600)
    assert done.phase == "succeeded", (done, cluster.controller_log()[-3000:])
    assert done.stage("train").attempts == 1
    [job] = jobs_of(cluster, "train")  # re-attached (AlreadyExists), not a second Job
    name = job["metadata"]["name"]
    assert len(cluster.kube.pods(f"batch.kubernetes.io/job-name={name}")) == 1
    creates = [r for r in cluster.kube.requests if r.verb == "create" and r.resource == "jobs"]
    assert [r.allowed for r in creates] == [True, True]  # the second one answered 409
    steps = [e.data["step"] for e in client.watch(pid) if e.stage == "train"
             and e.kind == "progress" and e.data.get("unit") == "steps"]  # fmt: skip
    assert steps == list(range(1, 81))  # each step once: the re-attach skipped what was seen


def losses(lines: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in lines.splitlines()]
    return [(row["step"], row["loss"]) for row in rows]


def stored_losses(store: Path, key: str) -> list[tuple[int, float]]:
    """Per-step losses of the committed training output whose manifest is ``key``."""
    local = LocalStore(store)
    manifest = Manifest.from_json(local.get_bytes(key), key)
    return losses(local.get_bytes(manifest.file_key("metrics.jsonl")).decode())


@pytest.mark.slow  # over a minute on 2 cores
def test_a_preempted_training_pod_is_retried_and_resumes_from_its_checkpoint(
    cluster_factory, tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    spec = write_spec(tmp_path / "preempt.yaml", tiny_chatml, sample_data / "pirate")
    straight = tmp_path / "straight"
    subprocess.run([TUNESHIP, "train", str(spec), "--out", str(straight)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    expected = losses((straight / "metrics.jsonl").read_text())

    cluster = cluster_factory(controller_env={"TUNESHIP_RETRY_BACKOFF_S": "0.5"})
    client = cluster.start_controller()
    pid = client.submit(spec).id
    followed = Followed(client, pid)
    followed.wait_for(lambda e: e.kind == "progress" and e.data.get("unit") == "steps"
                      and e.data.get("step", 0) >= 10, what="ten training steps")  # fmt: skip
    first = train_pod(cluster)
    cluster.kube.evict(first["metadata"]["name"])  # SIGTERM: it saves a checkpoint, then exits
    followed.wait_for(lambda e: e.stage == "train" and "succeeded" in e.text, 300, "train done")
    client.cancel(pid)  # the rest of the pipeline is another test's business

    info = client.get(pid)
    assert info.stage("train").attempts == 2
    texts = [e.text for e in followed.items]
    assert any("attempt 1 failed (UNAVAILABLE)" in t and "preempted" in t for t in texts), texts
    resumed = [t for t in texts if t.startswith("resuming from the stored checkpoint at step")]
    assert resumed and int(resumed[0].split()[-1]) >= 10, texts
    # A Job per attempt: the preempted one was deleted (no GPU held), the retry's remains.
    [job] = jobs_of(cluster, "train")
    assert job["metadata"]["annotations"][TASK_ANNOTATION] == f"{pid}.train.2"
    creates = [r for r in cluster.kube.requests if r.verb == "create" and r.resource == "jobs"]
    assert len(creates) == 2
    got = stored_losses(cluster.root / "store", info.stage("train").outputs["train"])
    assert [s for s, _ in got] == [s for s, _ in expected] == list(range(1, 81))
    for (step, want), (_, have) in zip(expected, got, strict=True):
        assert have == pytest.approx(want, rel=1e-5), f"step {step}"


def test_cancel_deletes_the_job_and_its_pod(
    cluster_factory, tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    cluster = cluster_factory()
    client = cluster.start_controller()
    pid = client.submit(
        write_spec(tmp_path / "cancel.yaml", tiny_chatml, sample_data / "pirate")
    ).id
    train_pod(cluster)
    client.cancel(pid)
    cancelled = wait(client, pid, finished, 60)
    assert cancelled.phase == "cancelled"
    cluster.kube.wait_for(lambda: not cluster.kube.jobs() and not cluster.kube.pods(
        "tuneship.dev/stage=train"), 60, "the Job and its pod deleted")  # fmt: skip


def test_an_oom_killed_pod_fails_the_stage_naming_the_limit_and_the_spec_fields(
    cluster_factory, tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    cluster = cluster_factory()
    client = cluster.start_controller()
    pid = client.submit(write_spec(tmp_path / "oom.yaml", tiny_chatml, sample_data / "pirate")).id
    cluster.kube.oom_kill(train_pod(cluster)["metadata"]["name"])
    failed = wait(client, pid, finished, 120)
    assert failed.phase == "failed"
    train = failed.stage("train")
    assert train.attempts == 1  # the same settings would run out of memory again
    limit = cluster.rendered.job_templates()["train"]["spec"]["template"]["spec"][
        "containers"][0]["resources"]["limits"]["memory"]  # fmt: skip
    assert f"OOMKilled at its limit of {limit}" in train.error
    assert "train.per_device_train_batch_size" in train.error
    assert "dataset.max_length" in train.error


def test_an_unschedulable_job_fails_clearly_after_the_timeout(
    cluster_factory, tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    cluster = cluster_factory(gpus=0, controller_env={
        "TUNESHIP_UNSCHEDULABLE_TIMEOUT_S": "2", "TUNESHIP_RETRY_ATTEMPTS": "2",
        "TUNESHIP_RETRY_BACKOFF_S": "0.2"})  # fmt: skip
    client = cluster.start_controller()
    pid = client.submit(write_spec(tmp_path / "nogpu.yaml", tiny_chatml, sample_data / "pirate")).id
    # "starting pod ..." can come first; wait for the scheduler's reason.
    waiting = wait(client, pid, lambda i: "Insufficient" in i.stage("train").waiting, 60,
                   "waiting for a node")  # fmt: skip
    assert waiting.stage("train").shown_phase == "waiting"
    assert "0/1 nodes are available" in waiting.stage("train").waiting
    assert "Insufficient nvidia.com/gpu" in waiting.stage("train").waiting
    failed = wait(client, pid, finished, 120)
    assert failed.phase == "failed"
    train = failed.stage("train")
    assert train.attempts == 2  # UNAVAILABLE is retried (a node may come), then it gives up
    assert "no node could run job ts-train-" in train.error
    assert "Insufficient nvidia.com/gpu" in train.error
    cluster.kube.wait_for(lambda: not cluster.kube.jobs(), 30, "no Job left holding a request")


def test_invalid_input_fails_at_once_without_a_retry(
    cluster_factory, tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    data = tmp_path / "broken"
    data.mkdir()
    good = (sample_data / "pirate" / "train.jsonl").read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join([good[0], '{"messages": [', *good[1:]]) + "\n")
    (data / "eval.jsonl").write_text((sample_data / "pirate" / "eval.jsonl").read_text())
    cluster = cluster_factory()
    client = cluster.start_controller()
    pid = client.submit(write_spec(tmp_path / "invalid.yaml", tiny_chatml, data)).id
    failed = wait(client, pid, finished, 120)
    assert failed.phase == "failed"
    train = failed.stage("train")
    assert train.attempts == 1
    assert "train.jsonl:2" in train.error
    # The pod exited with the invalid-input code: the Job's podFailurePolicy failed it.
    [job] = jobs_of(cluster, "train")
    name = job["metadata"]["name"]
    cluster.kube.wait_for(
        lambda: any(c["type"] == "Failed" and c.get("reason") == "PodFailurePolicy"
                    for c in (cluster.kube.get("Job", name).get("status") or {}).get(
                        "conditions") or []), 30, "the Job failed by its podFailurePolicy",
    )  # fmt: skip


def test_a_job_pod_that_cannot_start_fails_with_its_own_words(
    cluster_factory, tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    """A misconfigured pod (here: a store URL no tuneship understands) exits with the
    invalid-input code before it is Ready; the error carries the tail of its log."""
    cluster = cluster_factory(pod_env={"TUNESHIP_STORE": "ftp://nowhere/bucket"})
    client = cluster.start_controller()
    pid = client.submit(pirate_spec(tmp_path / "badpod.yaml", tiny_chatml, sample_data)).id
    failed = wait(client, pid, finished, 120)
    assert failed.phase == "failed"
    train = failed.stage("train")
    assert train.attempts == 1
    assert "rejected its input (exit 3)" in train.error
    assert "ftp://nowhere/bucket" in train.error and "TUNESHIP_STORE" in train.error


@pytest.mark.slow  # over a minute on 2 cores
def test_a_pool_pod_removed_mid_stage_is_retried_on_another(
    cluster_factory, tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    cluster = cluster_factory(values={"converter": {"replicas": 2}},
                              controller_env={"TUNESHIP_RETRY_BACKOFF_S": "0.5"})  # fmt: skip
    client = cluster.start_controller()
    pid = client.submit(write_spec(tmp_path / "pool.yaml", tiny_chatml, sample_data / "pirate")).id
    followed = Followed(client, pid)
    placed = followed.wait_for(lambda e: e.stage == "export" and e.text.startswith("running on"),
                               300, "export placed")  # fmt: skip
    ip = placed.text.split()[2].rsplit(":", 1)[0]
    [pod] = [p for p in cluster.kube.pods("app.kubernetes.io/component=converter")
             if (p.get("status") or {}).get("podIP") == ip]  # fmt: skip
    cluster.kube.delete_pod(pod["metadata"]["name"])
    done = wait(client, pid, finished, 600)
    assert done.phase == "succeeded", (done, cluster.controller_log()[-3000:])
    assert done.stage("export").attempts == 2
    places = [e.text for e in followed.items if e.stage == "export" and
              e.text.startswith("running on")]  # fmt: skip
    assert len(places) == 2 and places[0] != places[1]


def test_the_roles_verbs_are_exactly_those_the_controller_uses() -> None:
    """Run with the module: the tests above drive every path of the providers."""
    assert REQUESTED, "run this module's tests together: they record the requests"
    role = render(TEST_VALUES).get("Role", "controller")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    print(f"\nrequested: {sorted(REQUESTED)}\ngranted:   {sorted(granted)}")
    # Trainings on more than one node: tests/e2e/test_kubernetes_multinode.py checks those.
    multi_node = {("jobset.x-k8s.io", "jobsets"), ("networking.k8s.io", "networkpolicies")}
    assert {g for g in granted if g[:2] not in multi_node} == {
        r for r in REQUESTED if r[:2] not in multi_node
    }
