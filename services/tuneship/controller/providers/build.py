"""Building each stage's worker provider from the controller's settings."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from tuneship.common.errors import InvalidInput
from tuneship.common.stages import STAGES
from tuneship.controller.providers import StageWorkers, WorkerProvider
from tuneship.controller.providers.kube import PROVIDER_KINDS, KubeSettings
from tuneship.controller.providers.static import StaticProvider
from tuneship.controller.wire_clients import Channels


def build_workers(
    addresses: dict[str, str],
    kinds: dict[str, str],
    kube: KubeSettings | None,
    dial: Callable[[str], grpc.Channel] = grpc.insecure_channel,
) -> StageWorkers:
    """One provider per stage: ``kinds[stage]`` (default ``static``) configured from
    ``addresses`` (static) or ``kube`` (Jobs, pools); every worker is dialled with
    ``dial``. Bad settings raise ``InvalidInput`` naming the environment variable to fix."""
    channels = Channels(dial)
    providers: dict[str, WorkerProvider] = {}
    workloads = None
    for stage in STAGES:
        kind = kinds.get(stage, "static")
        if kind not in PROVIDER_KINDS:
            raise InvalidInput(
                f"unknown worker provider {kind!r} for {stage}",
                where="TUNESHIP_PROVIDERS",
                hint=" | ".join(PROVIDER_KINDS),
            )
        if kind == "static":
            if stage not in addresses:
                raise InvalidInput(
                    f"no address for the static {stage} workers",
                    where="TUNESHIP_WORKERS",
                    hint=f"{stage}=host:50051",
                )
            providers[stage] = StaticProvider(stage, addresses[stage], channels)
            continue
        if kube is None:
            raise InvalidInput(
                f"{stage} runs on {kind} but no Kubernetes settings were given",
                where="TUNESHIP_K8S_NAMESPACE",
            )
        from kubernetes import client

        api = client.ApiClient(kube.api)
        if kind == "k8s-job":
            from tuneship.controller.providers.k8s_job import JobProvider, JobWorkloads

            if stage not in kube.job_templates:
                raise InvalidInput(
                    f"no Job template for {stage}",
                    where="TUNESHIP_JOB_TEMPLATES",
                    hint=f"the chart mounts {stage}.yaml there",
                )
            workloads = workloads or JobWorkloads(kube, api)
            providers[stage] = JobProvider(stage, workloads, channels)
        else:
            from tuneship.controller.providers.k8s_pool import pool_provider

            if stage not in kube.pools:
                raise InvalidInput(
                    f"no pool Service for {stage}",
                    where="TUNESHIP_POOLS",
                    hint=f"{stage}=<headless service name>",
                )
            providers[stage] = pool_provider(stage, kube, api, channels)
    return StageWorkers(providers, channels)
