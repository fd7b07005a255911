"""The providers' pure parts: a Job per attempt from the chart's template, Ready
endpoints from EndpointSlices, the scheduler's limit and waiting, settings errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tuneship.cli.kube_env import kube_settings
from tuneship.common.errors import InvalidInput
from tuneship.common.settings import load_env
from tuneship.controller.providers.build import build_workers
from tuneship.controller.providers.k8s_pool import ready_endpoints
from tuneship.controller.providers.kube import (
    KUEUE_QUEUE_LABEL,
    TASK_ANNOTATION,
    TASK_LABEL,
    attempt_selector,
    job_manifest,
    job_name,
    load_job_template,
)

pytestmark = pytest.mark.unit

TEMPLATE = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"labels": {"app.kubernetes.io/component": "trainer"}},
    "spec": {
        "backoffLimit": 0,
        "template": {
            "metadata": {"labels": {"app.kubernetes.io/component": "trainer"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "worker",
                        "image": "ghcr.io/tuneship/tuneship-train:0.1.0",
                        "ports": [{"name": "grpc", "containerPort": 50051}],
                        "env": [{"name": "TUNESHIP_TASK_ID", "value": "stale"}],
                    }
                ],
            },
        },
    },
}


def test_the_same_attempt_always_names_the_same_job() -> None:
    first = job_name("train", "p-1.train.1")
    assert first == job_name("train", "p-1.train.1")
    assert first != job_name("train", "p-1.train.2")
    assert first.startswith("ts-train-") and len(first) <= 63


def test_job_manifest_labels_the_attempt_and_leaves_the_template_alone() -> None:
    job = job_manifest(TEMPLATE, "train", "p-1.train.2", "ml")
    assert job["metadata"]["name"] == job_name("train", "p-1.train.2")
    assert job["metadata"]["namespace"] == "ml"
    assert job["metadata"]["annotations"][TASK_ANNOTATION] == "p-1.train.2"
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[TASK_LABEL] == job["metadata"]["labels"][TASK_LABEL]
    assert pod_labels["app.kubernetes.io/component"] == "trainer"
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "TUNESHIP_TASK_ID", "value": "p-1.train.2"}]
    assert "suspend" not in job["spec"]
    assert TEMPLATE["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == "stale"


def test_a_kueue_job_is_created_suspended() -> None:
    queued = yaml.safe_load(yaml.safe_dump(TEMPLATE))
    queued["metadata"]["labels"][KUEUE_QUEUE_LABEL] = "gpu"
    assert job_manifest(queued, "train", "t", "ml")["spec"]["suspend"] is True


def test_a_template_without_the_worker_container_is_refused(tmp_path: Path) -> None:
    bad = yaml.safe_load(yaml.safe_dump(TEMPLATE))
    bad["spec"]["template"]["spec"]["containers"][0]["name"] = "main"
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(InvalidInput, match="'worker'") as caught:
        load_job_template(path)
    assert str(path) in str(caught.value.where)
    path.write_text("kind: Deployment\n")
    with pytest.raises(InvalidInput, match="not a batch/v1 Job"):
        load_job_template(path)
    path.write_text(yaml.safe_dump(TEMPLATE))
    assert load_job_template(path)["kind"] == "Job"


def test_ready_endpoints_follow_the_slices() -> None:
    slices = [
        {
            "ports": [{"name": "grpc", "port": 50051}],
            "endpoints": [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": True}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": False}},
                {"addresses": ["10.0.0.4"]},  # unset means ready
            ],
        },
        {"ports": [{"name": "metrics", "port": 9090}], "endpoints": [{"addresses": ["10.0.0.9"]}]},
    ]
    assert ready_endpoints(slices) == ["10.0.0.2:50051", "10.0.0.4:50051"]
    assert ready_endpoints([]) == []


def test_settings_errors_name_the_variable() -> None:
    with pytest.raises(InvalidInput) as caught:
        load_env({"TUNESHIP_WORKERS": "train=a,merge"})
    assert caught.value.where == "TUNESHIP_WORKERS"
    with pytest.raises(InvalidInput, match="too small"):
        load_env({"TUNESHIP_POOL_CAPACITY": "export=0"})
    with pytest.raises(InvalidInput, match="k8s-cron") as unknown:
        kube_settings(load_env({"TUNESHIP_PROVIDERS": "train=k8s-cron"}).values, {})
    assert unknown.value.where == "TUNESHIP_PROVIDERS"
    with pytest.raises(InvalidInput) as no_namespace:
        kube_settings(load_env({"TUNESHIP_PROVIDERS": "train=k8s-job"}).values, {})
    assert no_namespace.value.where == "TUNESHIP_K8S_NAMESPACE"
    assert kube_settings(load_env({"TUNESHIP_PROVIDERS": "train=static"}).values, {}) is None


def test_build_workers_names_what_is_missing() -> None:
    with pytest.raises(InvalidInput) as caught:
        build_workers({"train": "h:1"}, {}, None)
    assert caught.value.where == "TUNESHIP_WORKERS"
    with pytest.raises(InvalidInput) as caught:
        build_workers({}, {"train": "k8s-job"}, None)
    assert caught.value.where == "TUNESHIP_K8S_NAMESPACE"


def test_a_controller_watches_only_its_own_releases_attempts() -> None:
    mine = yaml.safe_load(yaml.safe_dump(TEMPLATE))
    mine["metadata"]["labels"]["app.kubernetes.io/instance"] = "team-a"
    assert attempt_selector([mine]) == f"{TASK_LABEL},app.kubernetes.io/instance=team-a"
    job = job_manifest(mine, "train", "t", "ml")
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] == "team-a"
    assert attempt_selector([TEMPLATE]) == TASK_LABEL
