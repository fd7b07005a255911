"""The chart's NetworkPolicies allow exactly the design's paths, no more, no less.

The rendered policies are evaluated (``tuneship.testing.helm.allowed_paths``) between
the release's pods and the world around them: clients, a bystander pod in the same
namespace, a pod of another namespace, cluster DNS, the Ingress controller,
Prometheus, the API server, an internet address and, per values, an external S3 and a
database. The set of allowed (from → to:port) paths that touch a release pod must
equal the set the design names (the table in docs/kubernetes.md "Security", values.yaml
``networkPolicy``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import helm_python
import kubernetes_validate
import pytest
from tuneship.testing.helm import (
    CHART_DIR,
    NAMESPACE,
    NEWEST,
    OLDEST,
    Endpoint,
    NetPath,
    allowed_paths,
    load_values,
    pod_endpoints,
    render,
    values_files,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WORKERS = ("trainer", "merger", "converter", "serving")
TCP, UDP = "TCP", "UDP"


def merged_values(name: str) -> dict[str, Any]:
    with helm_python.Chart.load(CHART_DIR) as chart:
        return chart.merge_values(load_values(name))


def first_host(cidr: str) -> str:
    return str(next(ipaddress.ip_network(cidr).hosts()))


def world(values: dict[str, Any]) -> list[Endpoint]:
    """Everything around the release, placed where the values say it is."""

    def ns(name: str) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": name}

    np = values["networkPolicy"]
    api_cidrs = np["apiServer"]["cidrs"]
    api_ip = "172.20.0.2" if "0.0.0.0/0" in api_cidrs else first_host(api_cidrs[0])
    endpoints = [
        Endpoint("client", "10.244.1.1", frozenset(), NAMESPACE,
                 {"tuneship.dev/client": "true"}, ns(NAMESPACE)),
        Endpoint("bystander", "10.244.1.2", frozenset({(8080, TCP), (50051, TCP)}), NAMESPACE,
                 {"app": "bystander"}, ns(NAMESPACE)),
        Endpoint("other-namespace", "10.244.1.3", frozenset({(50051, TCP)}), "other",
                 {"tuneship.dev/client": "true"}, ns("other")),
        Endpoint("kube-dns", "10.244.1.4", frozenset({(53, UDP), (53, TCP)}), "kube-system",
                 {"k8s-app": "kube-dns"}, ns("kube-system")),
        Endpoint("ingress-nginx", "10.244.1.5", frozenset({(443, TCP)}), "ingress-nginx",
                 {"app.kubernetes.io/name": "ingress-nginx"}, ns("ingress-nginx")),
        Endpoint("prometheus", "10.244.1.6", frozenset({(9090, TCP)}), "monitoring",
                 {"app.kubernetes.io/name": "prometheus"}, ns("monitoring")),
        Endpoint("apiserver", api_ip, frozenset({(443, TCP), (6443, TCP)})),
        Endpoint("internet", "93.184.216.34", frozenset({(80, TCP), (443, TCP)})),
    ]  # fmt: skip
    if values["s3"]["endpoint"]:
        port = int(values["s3"]["endpoint"].rpartition(":")[2])
        endpoints.append(Endpoint("s3", first_host(np["s3"]["cidrs"][0]), frozenset({(port, TCP)})))
    if values["controller"]["database"]["existingSecret"]:
        endpoints.append(Endpoint("database", first_host(np["database"]["cidrs"][0]),
                                  frozenset({(np["database"]["port"], TCP)})))  # fmt: skip
    return endpoints


def design_paths(
    values: dict[str, Any], pods: list[Endpoint], outside: list[Endpoint]
) -> set[NetPath]:
    """The paths the design allows, written out from the values (not from the policies)."""
    names = {p.name for p in pods}
    workers = [w for w in WORKERS if w in names]
    np = values["networkPolicy"]
    paths = {NetPath("client", "controller", 50051, TCP)}
    if values["ingress"]["enabled"]:
        paths.add(NetPath("ingress-nginx", "controller", 50051, TCP))
    if "test" in names:
        paths.add(NetPath("test", "controller", 50051, TCP))
    if values["console"]["enabled"]:
        # The console: browsers in (clients, the Ingress controller with its Ingress),
        # the controller's user API out.
        paths |= {NetPath("client", "console", 8080, TCP),
                  NetPath("console", "controller", 50051, TCP)}  # fmt: skip
        if values["console"]["ingress"]["enabled"]:
            paths.add(NetPath("ingress-nginx", "console", 8080, TCP))
    if np["prometheus"]:
        paths.add(NetPath("prometheus", "controller", 9090, TCP))
    paths |= {NetPath("controller", w, 50051, TCP) for w in workers}
    if values["minio"]["enabled"]:
        store, port = "minio", 9000
        callers = ["controller", *workers, "minio-bootstrap"]
    else:
        store, port = "s3", int(values["s3"]["endpoint"].rpartition(":")[2])
        callers = ["controller", *workers]
    paths |= {NetPath(c, store, port, TCP) for c in callers}
    paths |= {NetPath(p, "kube-dns", 53, proto) for p in names for proto in (UDP, TCP)}
    # The API server rule: controller → whatever lies in its CIDRs on its ports.
    api_cidrs = [ipaddress.ip_network(c) for c in np["apiServer"]["cidrs"]]
    for endpoint in outside:
        if endpoint.namespace is None and any(
            ipaddress.ip_address(endpoint.ip) in c for c in api_cidrs
        ):
            ports = [(p, proto) for p, proto in endpoint.ports if p in np["apiServer"]["ports"]]
            paths |= {NetPath("controller", endpoint.name, p, proto) for p, proto in ports}
    if values["controller"]["database"]["existingSecret"]:
        paths.add(NetPath("controller", "database", np["database"]["port"], TCP))
    return paths


@pytest.mark.parametrize("name", list(values_files()))
def test_network_policies_allow_exactly_the_designed_paths(name: str) -> None:
    values = merged_values(name)
    result = render(name)
    pods = pod_endpoints(result)
    outside = world(values)
    release = {p.name for p in pods}
    allowed = {
        path
        for path in allowed_paths(result.all("NetworkPolicy"), [*pods, *outside])
        if path.source in release or path.target in release
    }
    expected = design_paths(values, pods, outside)
    assert sorted(map(str, allowed - expected)) == [], "allowed beyond the design"
    assert sorted(map(str, expected - allowed)) == [], "designed but denied"
    # The facts the design states in words:
    assert not {
        p for p in allowed if p.source == "serving" and p.target not in ("minio", "s3", "kube-dns")
    }
    assert not {p for p in allowed if p.source in ("bystander", "other-namespace")}
    assert not {p for p in allowed if p.target == "internet" and p.source != "controller"}
    assert {(p.target, p.port) for p in allowed if p.source == "console"} <= {
        ("controller", 50051), ("kube-dns", 53)
    }  # fmt: skip


def test_every_release_pod_is_denied_by_default() -> None:
    result = render("default")
    [deny] = [
        p for p in result.all("NetworkPolicy") if p["metadata"]["name"].endswith("default-deny")
    ]
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    pods = pod_endpoints(result)
    assert allowed_paths([deny], pods) == set()


def test_clients_can_be_any_pod_of_the_namespace() -> None:
    """The documented way to open the user API to every pod of the namespace."""
    result = render({"networkPolicy": {"clients": [{"podSelector": {}}]}})
    pods = pod_endpoints(result)
    outside = world(merged_values("default"))
    allowed = allowed_paths(result.all("NetworkPolicy"), [*pods, *outside])
    assert NetPath("bystander", "controller", 50051, TCP) in allowed
    assert NetPath("other-namespace", "controller", 50051, TCP) not in allowed


def test_a_port_without_peers_admits_nobody() -> None:
    """No clients, no test pod, no console: the user API's rule has no peer left and is
    left out (a rule without ``from`` would admit every source); with the console, only
    the console reaches the controller, and nobody the console (port-forward aside)."""
    alone = {"networkPolicy": {"clients": []}, "tests": {"enabled": False}}
    outside = world(merged_values("default"))
    for values, expected in (
        ({**alone, "console": {"enabled": False}}, set()),
        (alone, {NetPath("console", "controller", 50051, TCP)}),
    ):
        result = render(values)
        policies = result.all("NetworkPolicy")
        allowed = allowed_paths(policies, [*pod_endpoints(result), *outside])
        assert {p for p in allowed if p.target in ("controller", "console")} == expected
        for policy in policies:
            for version in (OLDEST, NEWEST):
                kubernetes_validate.validate(policy, version, strict=True)


def test_disabled_network_policies_render_none() -> None:
    assert render({"networkPolicy": {"enabled": False}}).all("NetworkPolicy") == []


def test_the_evaluator_follows_kubernetes_semantics() -> None:
    """The evaluator itself, on the cases the chart's policies rely on."""
    a = Endpoint("a", "10.0.0.1", frozenset({(80, TCP)}), "ns", {"app": "a"}, {"team": "x"})
    b = Endpoint(
        "b", "10.0.0.2", frozenset({(80, TCP), (53, UDP)}), "ns", {"app": "b"}, {"team": "x"}
    )
    c = Endpoint("c", "10.0.0.3", frozenset({(80, TCP)}), "other", {"app": "b"}, {"team": "y"})
    outside = Endpoint("out", "192.0.2.7", frozenset({(80, TCP)}))
    everyone = [a, b, c, outside]

    def policy(spec: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "ns"}, "spec": spec}

    open_paths = allowed_paths([], everyone)
    assert NetPath("a", "out", 80, TCP) in open_paths and NetPath("out", "a", 80, TCP) in open_paths
    deny_b = policy({"podSelector": {"matchLabels": {"app": "b"}}})  # Ingress only by default
    assert {p.target for p in allowed_paths([deny_b], everyone)} == {"a", "c", "out"}
    from_team_x = policy({
        "podSelector": {"matchLabels": {"app": "b"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}],
                     "ports": [{"port": 53, "protocol": UDP}]}],
    })  # fmt: skip
    into_b = {p for p in allowed_paths([from_team_x], everyone) if p.target == "b"}
    assert into_b == {NetPath("a", "b", 53, UDP)}
    egress_block = policy({
        "podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["192.0.2.0/24"]}}]}],
    })  # fmt: skip
    from_ns = {p for p in allowed_paths([egress_block], everyone) if p.source in ("a", "b")}
    assert from_ns == set()  # ipBlock never matches pods; the one outside address is excepted
