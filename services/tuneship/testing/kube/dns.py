"""The fake's cluster DNS, for what pods name each other by: pod hostnames.

There is no resolver on a test machine that knows cluster names, so the fake kubelet
resolves them when it starts a container: an environment value that is exactly the
DNS name of a pod, ``<hostname>.<subdomain>`` (optionally followed by
``.<namespace>.svc`` and ``.cluster.local``), where a Service named ``<subdomain>``
exists in that namespace and a pod there has that ``spec.hostname`` and
``spec.subdomain`` (what a headless Service gives a JobSet's pods), is given to the
process as that pod's loopback IP. A name whose pod has no IP yet holds the container
in ``ContainerCreating`` until it has one (a real resolver answers NXDOMAIN until the
record exists, and torchrun retries its rendezvous until its timeout). Other values
are left alone; nothing else (Services' names, search domains) resolves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from tuneship.testing.kube import resources as r
from tuneship.testing.kube.store import ObjectStore

_POD_NAME = re.compile(
    r"^(?P<host>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.(?P<sub>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
    r"(\.(?P<ns>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?)?\.?$"
)

Resolver = Callable[[str, str], str | None]
"""(namespace of the asking pod, value) -> the IP ("" while it has none), or None when
the value is not a pod's DNS name."""


class Unresolved(Exception):
    """A pod's DNS name whose pod has no address yet."""


def resolver(store: ObjectStore, own: Mapping[str, str]) -> Resolver:
    """Resolve against ``store``; ``own`` maps a pod uid to the IP the kubelet gave it
    (a pod may name itself before its status carries its IP)."""

    def resolve(namespace: str, value: str) -> str | None:
        match = _POD_NAME.match(value)
        if match is None:
            return None
        where = match.group("ns") or namespace
        host, sub = match.group("host"), match.group("sub")
        if store.find(r.SERVICE, where, sub) is None:
            return None
        pods, _ = store.select(
            r.POD, where,
            lambda p: (p["spec"].get("hostname"), p["spec"].get("subdomain")) == (host, sub)
            and not p["metadata"].get("deletionTimestamp"),
        )  # fmt: skip
        for pod in pods:
            address = own.get(pod["metadata"]["uid"]) or (pod.get("status") or {}).get("podIP")
            if address:
                return str(address)
        return ""

    return resolve


def resolve_env(env: dict[str, str], namespace: str, resolve: Resolver) -> dict[str, str]:
    """``env`` with pod DNS names replaced by IPs; raises ``Unresolved`` naming the first
    name that has no address yet."""
    out = dict(env)
    for key, value in env.items():
        address = resolve(namespace, value)
        if address == "":
            raise Unresolved(f"fake DNS: {value} ({key}) has no address yet")
        if address is not None:
            out[key] = address
    return out
