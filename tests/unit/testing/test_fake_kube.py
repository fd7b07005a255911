"""The pure parts of the fake Kubernetes API: selectors, patches, env, failure policy.

The server, controllers and kubelet are tested end to end with the real client in
``tests/integration/test_fake_kube.py``.
"""

from __future__ import annotations

import pytest
from tuneship.testing.kube import env
from tuneship.testing.kube.errors import ApiError
from tuneship.testing.kube.failurepolicy import judge
from tuneship.testing.kube.patch import JSON_PATCH, MERGE, STRATEGIC, apply_patch
from tuneship.testing.kube.selectors import (
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)

pytestmark = pytest.mark.unit


def _obj(labels: dict[str, str]) -> dict:
    return {"metadata": {"name": "x", "namespace": "ns", "labels": labels}}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),  # != matches objects without the label
        ("a in (x, y),b", {"a": "y", "b": ""}, True),
        ("a notin (x,y)", {"a": "x"}, False),
        ("a notin (x,y)", {}, True),
        ("!a", {"a": "1"}, False),
        ("a,!b", {"a": "1"}, True),
        ("", {"anything": "1"}, True),
    ],
)
def test_label_selectors_follow_kubernetes_semantics(selector, labels, expected) -> None:
    assert labels_match(parse_label_selector(selector), _obj(labels)) is expected


def test_bad_selectors_are_400() -> None:
    with pytest.raises(ApiError) as bad:
        parse_label_selector("a in x")
    assert bad.value.code == 400
    with pytest.raises(ApiError) as unknown_field:
        parse_field_selector("spec.nodeName=n", "jobs")
    assert unknown_field.value.message == "field label not supported: spec.nodeName"


def test_field_selectors_per_resource() -> None:
    event = {"metadata": {"name": "e", "namespace": "ns"}, "reason": "Pending",
             "involvedObject": {"kind": "Job", "name": "train"}}  # fmt: skip
    both = "involvedObject.name=train,involvedObject.kind=Job"
    assert fields_match(parse_field_selector(both, "events"), event)
    assert not fields_match(parse_field_selector("reason!=Pending", "events"), event)
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Running"}}
    assert fields_match(parse_field_selector("status.phase=Running,spec.nodeName=", "pods"), pod)


def test_strategic_merge_merges_lists_by_key() -> None:
    pod = {
        "metadata": {"finalizers": ["a"]},
        "spec": {"containers": [{"name": "w", "image": "i:1"}, {"name": "s", "image": "o"}]},
    }
    patch = {
        "metadata": {"finalizers": ["b"]},
        "spec": {"containers": [{"name": "w", "image": "i:2"}, {"name": "s", "$patch": "delete"}]},
    }
    patched = apply_patch(pod, STRATEGIC, patch)
    assert patched["spec"]["containers"] == [{"name": "w", "image": "i:2"}]
    assert patched["metadata"]["finalizers"] == ["a", "b"]
    dropped = apply_patch(
        pod, STRATEGIC, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}
    )
    assert dropped["metadata"]["finalizers"] == []
    # A JSON merge patch replaces lists, and null deletes.
    merged = apply_patch(pod, MERGE, {"spec": {"containers": []}, "metadata": {"finalizers": None}})
    assert merged == {"metadata": {}, "spec": {"containers": []}}
    assert pod["spec"]["containers"][0]["image"] == "i:1"  # the target is untouched


def test_json_patch_operations_and_test_failure() -> None:
    doc = {"spec": {"replicas": 1, "list": [1, 2]}}
    patched = apply_patch(doc, JSON_PATCH, [
        {"op": "replace", "path": "/spec/replicas", "value": 3},
        {"op": "add", "path": "/spec/list/-", "value": 3},
        {"op": "remove", "path": "/spec/list/0"},
        {"op": "copy", "from": "/spec/replicas", "path": "/spec/copied"},
    ])  # fmt: skip
    assert patched == {"spec": {"replicas": 3, "list": [2, 3], "copied": 3}}
    with pytest.raises(ApiError) as failed:
        apply_patch(doc, JSON_PATCH, [{"op": "test", "path": "/spec/replicas", "value": 2}])
    assert failed.value.code == 422
    with pytest.raises(ApiError) as media:
        apply_patch(doc, "application/apply-patch+yaml", {})
    assert media.value.code == 415


def test_env_and_argv_are_built_like_the_kubelet() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "a"}},
           "spec": {"nodeName": "fake-node"}, "status": {"podIP": "127.0.9.9"}}  # fmt: skip
    container = {
        "name": "worker", "image": "registry:5000/team/train:1.2",
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}},
            {"name": "ADDR", "value": "$(POD_IP):50051"},
        ],
        "args": ["serve", "--host", "$(POD_IP)", "$$(POD_IP)", "$(UNSET)"],
    }  # fmt: skip
    data = {("ConfigMap", "cfg"): {"mode": "fast"}, ("Secret", "s"): {"t": "tok"}}
    built = env.container_env(pod, container, lambda kind, ns, name: data.get((kind, name)))
    assert built == {"CFG_mode": "fast", "POD_IP": "127.0.9.9", "APP": "a", "TOKEN": "tok",
                     "ADDR": "127.0.9.9:50051"}  # fmt: skip
    images = {"registry:5000/team/train": ["tuneship"]}
    assert env.argv(container, images, built) == [
        "tuneship", "serve", "--host", "127.0.9.9", "$(POD_IP)", "$(UNSET)"
    ]  # fmt: skip
    with pytest.raises(env.ImageError):
        env.argv(container, {}, built)
    with pytest.raises(env.ContainerConfigError, match='secret "s" not found'):
        env.container_env(pod, container, lambda kind, ns, name: data.get((kind, "cfg")))


def _failed_pod(exit_code: int, conditions: list[dict] | None = None) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ns"},
        "status": {
            "phase": "Failed",
            "conditions": conditions or [],
            "containerStatuses": [
                {"name": "worker", "state": {"terminated": {"exitCode": exit_code}}}
            ],
        },
    }


def test_pod_failure_policy_rules_in_order() -> None:
    exit_3 = {"containerName": "worker", "operator": "In", "values": [3]}
    job = {"spec": {"podFailurePolicy": {"rules": [
        {"action": "FailJob", "onExitCodes": exit_3},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]}}}  # fmt: skip
    fail = judge(job, _failed_pod(3))
    assert fail.action == "FailJob"
    assert fail.message == (
        "Container worker for pod ns/p failed with exit code 3 matching FailJob rule at index 0"
    )
    disrupted = _failed_pod(143, [{"type": "DisruptionTarget", "status": "True"}])
    assert judge(job, disrupted).action == "Ignore"
    assert judge(job, _failed_pod(1)).action == "Count"
    assert judge({"spec": {}}, _failed_pod(3)).action == "Count"
