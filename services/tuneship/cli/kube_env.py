"""The controller's Kubernetes settings from the environment the chart renders
(docs/kubernetes.md lists every variable)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuneship.common.errors import InvalidInput
from tuneship.controller.providers.kube import PROVIDER_KINDS, KubeSettings, load_job_template


def pairs(text: str, what: str) -> dict[str, str]:
    """``a=1,b=2`` as a dict; ``InvalidInput`` naming ``what`` on a malformed item."""
    found = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise InvalidInput(f"{item!r} is not name=value", where=what)
        found[key.strip()] = value.strip()
    return found


def numbers(text: str, what: str) -> dict[str, int]:
    found = {}
    for key, value in pairs(text, what).items():
        try:
            found[key] = int(value)
        except ValueError as exc:
            raise InvalidInput(f"{key}={value!r} is not a whole number", where=what) from exc
        if found[key] < 1:
            raise InvalidInput(f"{key}={value} must be at least 1", where=what)
    return found


def number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError as exc:
        raise InvalidInput(f"{raw!r} is not a number of seconds", where=name) from exc


def kube_settings(env: Mapping[str, str], kinds: dict[str, str]) -> KubeSettings | None:
    """Settings for the k8s-* providers named in ``kinds`` (None when none is used)."""
    for stage, kind in kinds.items():
        if kind not in PROVIDER_KINDS:
            raise InvalidInput(
                f"unknown worker provider {kind!r} for {stage}",
                where="TUNESHIP_PROVIDERS",
                hint=" | ".join(PROVIDER_KINDS),
            )
    used = {s: k for s, k in kinds.items() if k != "static"}
    if not used:
        return None
    namespace = env.get("TUNESHIP_K8S_NAMESPACE", "")
    if not namespace:
        raise InvalidInput(
            "the Kubernetes providers need a namespace",
            where="TUNESHIP_K8S_NAMESPACE",
            hint="the chart sets it",
        )
    templates_dir = Path(env.get("TUNESHIP_JOB_TEMPLATES", "/etc/tuneship/jobs"))
    templates = {
        stage: load_job_template(templates_dir / f"{stage}.yaml")
        for stage, kind in used.items()
        if kind == "k8s-job"
    }
    return KubeSettings(
        namespace=namespace,
        api=api_configuration(env),
        job_templates=templates,
        pools=pairs(env.get("TUNESHIP_POOLS", ""), "TUNESHIP_POOLS"),
        pool_capacity=numbers(env.get("TUNESHIP_POOL_CAPACITY", ""), "TUNESHIP_POOL_CAPACITY"),
        unschedulable_timeout_s=number(env, "TUNESHIP_UNSCHEDULABLE_TIMEOUT_S", 900.0),
        start_timeout_s=number(env, "TUNESHIP_START_TIMEOUT_S", 1800.0),
    )


def api_configuration(env: Mapping[str, str]) -> Any:
    """The in-cluster service account when running in a pod, else ``KUBECONFIG``."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if env.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=env.get("KUBECONFIG") or None, client_configuration=configuration
            )
    except config.ConfigException as exc:
        raise InvalidInput(
            f"cannot reach the Kubernetes API: {exc}",
            where="KUBECONFIG",
            hint="run the controller in the cluster (the chart does) or set KUBECONFIG",
        ) from exc
    return configuration
