"""The controller's Kubernetes settings from the environment the chart renders
(docs/kubernetes.md lists every variable; ``TuneshipEnv`` parses them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneship.common.errors import InvalidInput
from tuneship.common.settings import TuneshipEnv
from tuneship.controller.providers.kube import (
    PROVIDER_KINDS,
    KubeSettings,
    MultiNodeSettings,
    load_job_template,
    load_network_policy,
)


def kube_settings(values: TuneshipEnv, env: Mapping[str, str]) -> KubeSettings | None:
    """Settings for the k8s-* providers ``values.providers`` names (None when none is
    used); ``env`` says how to reach the API (``KUBERNETES_SERVICE_HOST``, ``KUBECONFIG``)."""
    kinds = values.providers
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
    if not values.k8s_namespace:
        raise InvalidInput(
            "the Kubernetes providers need a namespace",
            where="TUNESHIP_K8S_NAMESPACE",
            hint="the chart sets it",
        )
    templates = {
        stage: load_job_template(values.job_templates / f"{stage}.yaml")
        for stage, kind in used.items()
        if kind == "k8s-job"
    }
    return KubeSettings(
        namespace=values.k8s_namespace,
        api=api_configuration(env),
        job_templates=templates,
        pools=dict(values.pools),
        pool_capacity=dict(values.pool_capacity),
        unschedulable_timeout_s=values.unschedulable_timeout_s,
        start_timeout_s=values.start_timeout_s,
        multinode=MultiNodeSettings(
            kind=values.multinode_kind,
            trainjob_runtime=values.trainjob_runtime,
            rendezvous_port=values.rendezvous_port or 29400,
            max_nodes=values.max_nodes,
            network_policy=load_network_policy(values.job_templates / "train-network.yaml"),
        ),
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
