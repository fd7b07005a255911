"""The resource types the fake serves, and the discovery documents that describe them.

One table (``RESOURCES``) is the single place that says which group/version/resource
exists, its kind, whether it is namespaced, which subresources and verbs it has and
how a DELETE propagates by default. Routing, discovery, ``FakeKube.apply`` and the
garbage collector all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

ITEM_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

# The clients only need a plausible server; 1.34 is the newest minor the chart supports.
DEFAULT_VERSION = "v1.34.0"


@dataclass(frozen=True)
class ResourceType:
    """One REST resource, e.g. ``batch/v1 jobs``.

    ``default_propagation`` is what a DELETE without ``propagationPolicy`` does:
    ``Orphan`` for ``batch/v1`` Jobs (the API server's legacy default; clients must ask
    for ``Background`` to delete a Job's pods), ``Background`` for everything else.
    """

    group: str
    version: str
    resource: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    default_propagation: str = "Background"

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, else ``group/version``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``jobs.batch`` / ``pods``: how the API server names a resource in messages."""
        return f"{self.resource}.{self.group}" if self.group else self.resource

    @property
    def has_status(self) -> bool:
        """Whether writes to the main resource leave ``.status`` alone (and vice versa)."""
        return "status" in self.subresources


RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",)),
    ResourceType("", "v1", "pods", "Pod", subresources=("status", "log", "eviction"),
                 short_names=("po",)),
    ResourceType("", "v1", "events", "Event", short_names=("ev",)),
    ResourceType("", "v1", "secrets", "Secret"),
    ResourceType("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    ResourceType("", "v1", "services", "Service", subresources=("status",),
                 short_names=("svc",)),
    ResourceType("batch", "v1", "jobs", "Job", subresources=("status",),
                 default_propagation="Orphan"),
    ResourceType("apps", "v1", "deployments", "Deployment", subresources=("status",),
                 short_names=("deploy",)),
    ResourceType("apps", "v1", "replicasets", "ReplicaSet", subresources=("status",),
                 short_names=("rs",)),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy",
                 short_names=("netpol",)),
    # Custom resources (their CRDs installed): validated against their schemas (crds.py).
    ResourceType("jobset.x-k8s.io", "v1alpha2", "jobsets", "JobSet", subresources=("status",)),
    ResourceType("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob",
                 subresources=("status",)),
    ResourceType("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes",
                 "ClusterTrainingRuntime", namespaced=False),
)  # fmt: skip

POD = RESOURCES[1]
EVENT = RESOURCES[2]
SECRET = RESOURCES[3]
CONFIGMAP = RESOURCES[4]
SERVICE = RESOURCES[5]
JOB = RESOURCES[6]
DEPLOYMENT = RESOURCES[7]
REPLICASET = RESOURCES[8]
ENDPOINTSLICE = RESOURCES[9]
NAMESPACE = RESOURCES[0]
NETWORKPOLICY = RESOURCES[10]
JOBSET = RESOURCES[11]
TRAINJOB = RESOURCES[12]
TRAINING_RUNTIME = RESOURCES[13]


def find(group: str, version: str, resource: str) -> ResourceType | None:
    """The resource served at ``/apis/<group>/<version>/<resource>``, or None."""
    for rtype in RESOURCES:
        if (rtype.group, rtype.version, rtype.resource) == (group, version, resource):
            return rtype
    return None


def by_kind(api_version: str, kind: str) -> ResourceType | None:
    """The resource for a manifest's ``apiVersion`` and ``kind``, or None if not served."""
    for rtype in RESOURCES:
        if rtype.api_version == api_version and rtype.kind == kind:
            return rtype
    return None


def by_name(name: str) -> ResourceType:
    """A resource by kind (``Job``), plural (``jobs``) or short name, case-insensitively.

    Raises KeyError naming the served kinds when there is none.
    """
    wanted = name.lower()
    for rtype in RESOURCES:
        if wanted in (rtype.kind.lower(), rtype.resource, *rtype.short_names):
            return rtype
    raise KeyError(f"{name!r} is not served by the fake; it serves {served_kinds()}")


def served_kinds() -> list[str]:
    """``["v1/Pod", "batch/v1/Job", ...]``: for error messages."""
    return [f"{r.api_version}/{r.kind}" for r in RESOURCES]


def version_info(git_version: str) -> dict[str, str]:
    """The ``/version`` document (every field the clients require)."""
    major, minor = git_version.lstrip("v").split(".")[:2]
    return {
        "major": major, "minor": minor, "emulationMajor": major, "emulationMinor": minor,
        "minCompatibilityMajor": major, "minCompatibilityMinor": minor,
        "gitVersion": git_version, "gitCommit": "0" * 40, "gitTreeState": "clean",
        "buildDate": "2025-08-27T00:00:00Z", "goVersion": "go1.24.6", "compiler": "gc",
        "platform": "linux/amd64",
    }  # fmt: skip


def core_versions(server_address: str) -> dict[str, object]:
    """``/api``: the legacy core group's versions."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def group_list() -> dict[str, object]:
    """``/apis``: every named group with its (single) preferred version."""
    groups: dict[str, str] = {}
    for rtype in RESOURCES:
        if rtype.group:
            groups.setdefault(rtype.group, rtype.version)
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": group,
                "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
                "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version},
            }
            for group, version in groups.items()
        ],
    }


def group_versions(group: str) -> dict[str, object] | None:
    """``/apis/<group>``: the APIGroup document, or None for an unknown group."""
    versions = sorted({r.version for r in RESOURCES if r.group == group and group})
    if not versions:
        return None
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": entries,
        "preferredVersion": entries[0],
    }


def resource_list(group: str, version: str) -> dict[str, object] | None:
    """``/api/v1`` or ``/apis/<group>/<version>``: an APIResourceList, or None if unknown."""
    served = [r for r in RESOURCES if (r.group, r.version) == (group, version)]
    if not served:
        return None
    resources: list[dict[str, object]] = []
    for rtype in served:
        resources.append(_resource_entry(rtype, rtype.resource, rtype.kind, ITEM_VERBS))
        for sub in rtype.subresources:
            kind, verbs = _SUBRESOURCE_SHAPE[sub]
            resources.append(_resource_entry(rtype, f"{rtype.resource}/{sub}", kind or rtype.kind,
                                             verbs))  # fmt: skip
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


_SUBRESOURCE_SHAPE: dict[str, tuple[str, tuple[str, ...]]] = {
    "status": ("", ("get", "patch", "update")),
    "log": ("Pod", ("get",)),
    "eviction": ("Eviction", ("create",)),
}


def _resource_entry(
    rtype: ResourceType, name: str, kind: str, verbs: tuple[str, ...]
) -> dict[str, object]:
    entry: dict[str, object] = {
        "name": name,
        "singularName": rtype.kind.lower() if "/" not in name else "",
        "namespaced": rtype.namespaced,
        "kind": kind,
        "verbs": list(verbs),
    }
    if rtype.short_names and "/" not in name:
        entry["shortNames"] = list(rtype.short_names)
    if kind == "Eviction":
        entry["group"], entry["version"] = "policy", "v1"
    return entry
