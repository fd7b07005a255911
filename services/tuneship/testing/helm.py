"""The Helm chart (``charts/tuneship``) rendered offline, and what tests ask of it.

``render`` runs Helm's own engine (helm-python-sdk) on a values file and returns the
manifests as dicts; ``Rendered`` finds objects by kind and name, lists every pod spec
(including the Job templates that the jobs ConfigMap carries as text), and
``allowed_paths`` evaluates the rendered NetworkPolicies: which (from → to:port) paths
they let through between given endpoints.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import helm_python
import yaml
from helm_python import _native

REPO = Path(__file__).resolve().parents[3]
CHART_DIR = REPO / "charts" / "tuneship"
EXAMPLES_DIR = REPO / "examples" / "helm"
RELEASE = "ts"
NAMESPACE = "tuneship"
SERVICE_MONITOR = "monitoring.coreos.com/v1/ServiceMonitor"
OLDEST, NEWEST = "1.31.0", "1.37.0"
"""The Kubernetes versions the chart supports at both ends (Chart.yaml kubeVersion):
every rendered manifest is validated against both."""

Manifest = dict[str, Any]


def values_files() -> dict[str, Path | None]:
    """The values matrix: ``default`` (the chart's own values) and ``examples/helm/*``."""
    files: dict[str, Path | None] = {"default": None}
    files.update({path.stem: path for path in sorted(EXAMPLES_DIR.glob("*.yaml"))})
    return files


def load_values(name: str) -> dict[str, Any]:
    """The user values of one entry of ``values_files()`` (``{}`` for ``default``)."""
    path = values_files()[name]
    return {} if path is None else dict(yaml.safe_load(path.read_text()) or {})


def fullname(release: str = RELEASE) -> str:
    """The chart's object-name prefix for ``release`` (its ``tuneship.fullname``)."""
    return release if "tuneship" in release else f"{release}-tuneship"


@dataclass(frozen=True)
class PodTemplate:
    """One pod the release can run: where it is defined, its labels and its spec."""

    owner: str
    """``Kind/name``, or ``ConfigMap/name:key`` for a Job template."""
    labels: Mapping[str, str]
    spec: Mapping[str, Any]

    @property
    def component(self) -> str:
        return str(self.labels.get("app.kubernetes.io/component", ""))

    def containers(self) -> list[dict[str, Any]]:
        """Init containers (native sidecars included) and containers."""
        return [*self.spec.get("initContainers", []), *self.spec.get("containers", [])]


@dataclass(frozen=True)
class Rendered:
    """The manifests of one rendering (hooks and the test pod included) and NOTES.txt."""

    manifests: tuple[Manifest, ...]
    notes: str
    release: str = RELEASE

    @property
    def fullname(self) -> str:
        return fullname(self.release)

    def all(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest:
        """The object ``kind``/``name``; a name without the fullname prefix gets it."""
        wanted = {name, f"{self.fullname}-{name}"}
        found = [m for m in self.all(kind) if m["metadata"]["name"] in wanted]
        if len(found) != 1:
            present = sorted(m["metadata"]["name"] for m in self.all(kind))
            raise KeyError(f"{kind} {name}: {len(found)} found; present: {present}")
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        try:
            self.get(kind, name)
        except KeyError:
            return False
        return True

    def job_templates(self) -> dict[str, Manifest]:
        """``{stage: Job manifest}`` parsed from the jobs ConfigMap (empty without one);
        its other manifest (``train-network.yaml``, a NetworkPolicy) is left out."""
        if not self.has("ConfigMap", "jobs"):
            return {}
        data = self.get("ConfigMap", "jobs")["data"]
        parsed = {key.removesuffix(".yaml"): yaml.safe_load(text) for key, text in data.items()}
        return {stage: job for stage, job in parsed.items() if job.get("kind") == "Job"}

    def pod_templates(self) -> list[PodTemplate]:
        """Every pod spec: workloads, Jobs, the test pod and the Job templates."""
        pods = []
        for manifest in self.manifests:
            owner = f"{manifest['kind']}/{manifest['metadata']['name']}"
            if manifest["kind"] == "Pod":
                pods.append(PodTemplate(owner, manifest["metadata"]["labels"], manifest["spec"]))
            elif manifest["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
                template = manifest["spec"]["template"]
                pods.append(PodTemplate(owner, template["metadata"]["labels"], template["spec"]))
        jobs = f"ConfigMap/{self.fullname}-jobs"
        for stage, job in self.job_templates().items():
            template = job["spec"]["template"]
            pods.append(
                PodTemplate(
                    f"{jobs}:{stage}.yaml", template["metadata"]["labels"], template["spec"]
                )
            )
        return pods

    def env(self, kind: str, name: str, container: str) -> dict[str, Any]:
        """``{NAME: value or valueFrom}`` of one container of a workload."""
        spec = self.get(kind, name)["spec"]["template"]["spec"]
        return container_env(PodTemplate(name, {}, spec), container)


def container_env(pod: PodTemplate, container: str) -> dict[str, Any]:
    """``{NAME: value or valueFrom}`` of container ``container`` of ``pod``."""
    for candidate in pod.containers():
        if candidate["name"] == container:
            return {e["name"]: e.get("value", e.get("valueFrom")) for e in candidate.get("env", [])}
    raise KeyError(f"{pod.owner} has no container {container}")


def render(
    values: Mapping[str, Any] | str | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    is_upgrade: bool = False,
    kube_version: str | None = None,
    api_versions: Sequence[str] = (),
    config: helm_python.Config | None = None,
) -> Rendered:
    """Render the chart: ``values`` is a dict, a name from ``values_files()`` or None.

    Offline by default (``lookup`` finds nothing, as on a first install). With
    ``config`` (a ``helm_python.Config`` pointing at an API server), ``lookup`` asks
    that server; ``kube_version`` and ``api_versions`` then come from it too.

    Raises ``helm_python.HelmValuesError`` when the values break the schema and
    ``helm_python.HelmRenderError`` when a template fails.
    """
    user = load_values(values) if isinstance(values, str) else dict(values or {})
    with helm_python.Chart.load(CHART_DIR) as chart:
        if config is not None:
            out = config.render(
                chart, user, name=release, namespace=namespace,
                is_install=not is_upgrade, is_upgrade=is_upgrade,
            )  # fmt: skip
        else:
            # The C ABI's render takes kube_version and api_versions (`helm template
            # --kube-version --api-versions`); the Python wrapper does not pass them on.
            options: dict[str, Any] = {
                "name": release, "namespace": namespace,
                "is_install": not is_upgrade, "is_upgrade": is_upgrade,
                "api_versions": list(api_versions),
            }  # fmt: skip
            if kube_version:
                options["kube_version"] = kube_version
            text = _native.call_string(
                "helm_render", chart._raw(), json.dumps(user), json.dumps(options)
            )
            out = json.loads(text)
    notes = "".join(text for path, text in out.items() if path.endswith("NOTES.txt"))
    manifests = tuple(
        doc
        for path, text in sorted(out.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    )
    return Rendered(manifests, notes, release)


def lint(values: Mapping[str, Any], kube_version: str) -> list[str]:
    """``helm lint --strict``: every warning or error as ``path: message`` (info left out)."""
    report = helm_python.lint(
        CHART_DIR, dict(values), strict=True, namespace=NAMESPACE, kube_version=kube_version
    )
    found = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return [*found, *report["errors"]]


# --- NetworkPolicy evaluation -------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Something that sends or receives traffic.

    A pod has a ``namespace``; an address outside the cluster has none and is matched
    by ``ipBlock`` peers only. Pods are never matched by ``ipBlock``: the API says
    ipBlock is for cluster-external addresses and leaves pod IPs to the
    implementation, so a policy that relied on it would not be portable.
    """

    name: str
    ip: str
    ports: frozenset[tuple[int, str]] = frozenset()
    """(port, protocol) it listens on."""
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)


class NetPath(NamedTuple):
    source: str
    target: str
    port: int
    protocol: str

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}:{self.port}/{self.protocol}"


def pod_endpoints(rendered: Rendered, namespace: str = NAMESPACE) -> list[Endpoint]:
    """One endpoint per pod template of the release, named by its component, listening
    on its containers' declared ports (a sidecar on loopback declares none)."""
    endpoints = []
    for index, pod in enumerate(rendered.pod_templates(), start=10):
        ports = frozenset(
            (int(p["containerPort"]), p.get("protocol", "TCP"))
            for c in pod.containers()
            for p in c.get("ports", [])
        )
        endpoints.append(
            Endpoint(
                pod.component, f"10.244.0.{index}", ports, namespace, dict(pod.labels),
                {"kubernetes.io/metadata.name": namespace},
            )
        )  # fmt: skip
    return endpoints


def allowed_paths(
    policies: Iterable[Manifest], endpoints: Sequence[Endpoint], default_namespace: str = NAMESPACE
) -> set[NetPath]:
    """Every (source → target:port) that the policies allow, for each port a target
    listens on. A direction no policy selects a pod for is open (as in Kubernetes)."""
    policies = list(policies)
    paths = set()
    for source in endpoints:
        for target in endpoints:
            if source is target:
                continue
            for port, protocol in sorted(target.ports):
                if _allows(
                    policies, "Egress", source, target, port, protocol, default_namespace
                ) and _allows(
                    policies, "Ingress", target, source, port, protocol, default_namespace
                ):
                    paths.add(NetPath(source.name, target.name, port, protocol))
    return paths


def _allows(
    policies: list[Manifest], direction: str, pod: Endpoint, peer: Endpoint,
    port: int, protocol: str, default_namespace: str,
) -> bool:  # fmt: skip
    """Whether ``pod``'s ``direction`` policies let traffic with ``peer`` on ``port``."""
    if pod.namespace is None:
        return True  # not a pod: no NetworkPolicy applies to it
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", default_namespace) == pod.namespace
        and direction in _policy_types(p["spec"])
        and selector_matches(p["spec"].get("podSelector", {}), pod.labels)
    ]
    if not selecting:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in selecting:
        namespace = policy["metadata"].get("namespace", default_namespace)
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if peers and not any(_peer_matches(p, peer, namespace) for p in peers):
                continue
            if _port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def _policy_types(spec: Mapping[str, Any]) -> list[str]:
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if "egress" in spec else [])]


def _peer_matches(peer: Mapping[str, Any], endpoint: Endpoint, namespace: str) -> bool:
    if "ipBlock" in peer:
        if endpoint.namespace is not None:
            return False
        address = ipaddress.ip_address(endpoint.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except", [])
        )
    if endpoint.namespace is None:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], endpoint.namespace_labels):
            return False
    elif endpoint.namespace != namespace:
        return False
    return selector_matches(peer.get("podSelector", {}), endpoint.labels)


def _port_matches(ports: list[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        if not isinstance(wanted, int):
            raise ValueError(f"named port {wanted!r}: this evaluator takes numbers only")
        if wanted <= port <= entry.get("endPort", wanted):
            return True
    return False


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels and matchExpressions); ``{}`` matches all."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True
