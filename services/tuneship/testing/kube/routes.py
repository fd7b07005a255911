"""Paths and query parameters of the Kubernetes REST API, parsed into what they mean.

Paths follow the API server's: ``/api/v1/...`` for the core group,
``/apis/<group>/<version>/...`` for the others, ``namespaces/<ns>/`` before namespaced
resources (left out to list or watch across namespaces), then ``<resource>``,
``<name>`` and a subresource. HTTP methods map to verbs as the authorizer sees them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneship.testing.kube import errors
from tuneship.testing.kube import resources as r
from tuneship.testing.kube.resources import ResourceType
from tuneship.testing.kube.selectors import (
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)
from tuneship.testing.kube.store import DeleteOptions


@dataclass(frozen=True)
class Route:
    """A resource request's target: ``namespace`` is ``""`` across namespaces."""

    rtype: ResourceType
    namespace: str
    name: str
    subresource: str


def parse_route(path: str) -> Route | None:
    """The resource a path names, None for a non-resource (discovery) path; 404 otherwise."""
    parts = [part for part in path.split("/") if part]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    rtype = r.find(group, version, rest[0])
    if rtype is None or len(rest) > 3 or (namespace and not rtype.namespaced):
        raise errors.route_not_found(path)
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if subresource and subresource not in rtype.subresources:
        raise errors.route_not_found(path)
    return Route(rtype, namespace, name, subresource)


def verb_for(method: str, route: Route, query: dict[str, str]) -> str:
    """The authorizer's verb for an HTTP method on a route; 405 where none applies."""
    if method == "GET" and route.subresource != "eviction":
        if route.name:
            return "get"
        return "watch" if query.get("watch", "").lower() in ("true", "1") else "list"
    if method == "POST" and (not route.name or route.subresource == "eviction"):
        return "create"
    if method in ("PUT", "PATCH") and route.name and route.subresource in ("", "status"):
        return "update" if method == "PUT" else "patch"
    if method == "DELETE" and not route.subresource:
        return "delete" if route.name else "deletecollection"
    raise errors.method_not_allowed()


def discovery_document(path: str, git_version: str, server_address: str) -> Any:
    """The body of a non-resource GET, or raise 404."""
    parts = [part for part in path.split("/") if part]
    found: Any = None
    if parts == ["version"]:
        found = r.version_info(git_version)
    elif parts in (["healthz"], ["readyz"], ["livez"]):
        found = "ok"
    elif parts == ["api"]:
        found = r.core_versions(server_address)
    elif parts == ["api", "v1"]:
        found = r.resource_list("", "v1")
    elif parts == ["apis"]:
        found = r.group_list()
    elif len(parts) == 2 and parts[0] == "apis":
        found = r.group_versions(parts[1])
    elif len(parts) == 3 and parts[0] == "apis":
        found = r.resource_list(parts[1], parts[2])
    if found is None:
        raise errors.route_not_found(path)
    return found


def continue_token(rv: int, after: tuple[str, str]) -> str:
    """An opaque ``continue`` value: where the next page starts."""
    return base64.urlsafe_b64encode(json.dumps([rv, *after]).encode()).decode()


def parse_continue(token: str) -> tuple[int, tuple[str, str]]:
    """The inverse of :func:`continue_token`; 400 if it is not one of ours."""
    try:
        rv, namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(rv), (str(namespace), str(name))
    except (ValueError, TypeError):
        raise errors.bad_request("invalid continue token") from None


def selector_predicate(rtype: ResourceType, query: dict[str, str]) -> Callable[[Any], bool]:
    """``labelSelector`` and ``fieldSelector`` as one predicate on objects (400 if bad)."""
    labels = parse_label_selector(query.get("labelSelector", ""))
    fields = parse_field_selector(query.get("fieldSelector", ""), rtype.resource)
    return lambda obj: labels_match(labels, obj) and fields_match(fields, obj)


def delete_options(query: dict[str, str], body: Any) -> DeleteOptions:
    """``DeleteOptions`` from the body (the python client's way) or the query string."""
    body = body if isinstance(body, dict) else {}
    preconditions = body.get("preconditions") or {}
    grace = body.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
    propagation = body.get("propagationPolicy", query.get("propagationPolicy"))
    orphan = body.get("orphanDependents", query.get("orphanDependents"))
    if propagation is None and orphan is not None:
        propagation = "Orphan" if str(orphan).lower() == "true" else "Background"
    if propagation not in (None, "Orphan", "Background", "Foreground"):
        raise errors.bad_request(f"unsupported propagationPolicy {propagation!r}")
    return DeleteOptions(
        grace_seconds=None if grace in (None, "") else int(grace),
        propagation=propagation,
        uid=preconditions.get("uid"),
        resource_version=preconditions.get("resourceVersion"),
    )
