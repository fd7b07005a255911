"""The REST verbs on one resource route: what each request does to the store and what
it answers (status codes and bodies as the API server's)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tuneship.testing.kube import errors, routes, streams
from tuneship.testing.kube import resources as r
from tuneship.testing.kube.rbac import ApiRequest
from tuneship.testing.kube.routes import Route
from tuneship.testing.kube.store import ObjectStore


class ApiBackend(Protocol):
    """What the HTTP layer needs from ``FakeKube``."""

    store: ObjectStore
    role: dict[str, Any] | None
    namespace: str
    requests: list[ApiRequest]
    git_version: str

    def container_log(self, pod: dict[str, Any], container: str) -> tuple[Path, Callable[[], bool]]:
        """The log file of a started container and whether it has finished; 400 if not started."""
        ...

    def evict(self, name: str, reason: str = ..., *, namespace: str | None = ...) -> None:
        """Evict a pod (DisruptionTarget condition, then graceful deletion)."""
        ...


class Responder(streams.ChunkedResponse, Protocol):
    """The HTTP handler, as the verbs use it."""

    def header(self, name: str) -> str: ...
    def json_body(self, raw: bytes) -> Any: ...
    def send_json(self, status: int, body: Any) -> None: ...
    def send_bytes(self, status: int, data: bytes, content_type: str) -> None: ...


def serve(
    out: Responder,
    backend: ApiBackend,
    route: Route,
    verb: str,
    query: dict[str, str],
    raw: bytes,
) -> None:
    """Carry out one authorized resource request and write its response."""
    store, rtype = backend.store, route.rtype
    if query.get("dryRun"):
        raise errors.bad_request("the fake Kubernetes API does not support dryRun")
    if verb == "get" and route.subresource == "log":
        _serve_log(out, backend, route, query)
    elif verb == "get":
        out.send_json(200, store.get(rtype, route.namespace, route.name))
    elif verb == "list":
        out.send_json(200, _list(store, route, query))
    elif verb == "watch":
        predicate = routes.selector_predicate(rtype, query)
        watch = streams.WatchRequest.parse(rtype, route.namespace or None, predicate, query)
        streams.stream_watch(out, store, watch)
    elif verb == "create" and route.subresource == "eviction":
        store.get(rtype, route.namespace, route.name)
        backend.evict(route.name, "EvictionByEvictionAPI", namespace=route.namespace)
        out.send_json(201, _success(rtype, route.name))
    elif verb == "create":
        out.send_json(201, store.create(rtype, route.namespace, _object(out, raw)))
    elif verb == "update":
        body = _object(out, raw)
        out.send_json(
            200, store.replace(rtype, route.namespace, route.name, body, route.subresource)
        )
    elif verb == "patch":
        content_type = out.header("Content-Type")
        body = out.json_body(raw)
        patched = store.patch(
            rtype, route.namespace, route.name, content_type, body, route.subresource
        )
        out.send_json(200, patched)
    elif verb == "delete":
        options = routes.delete_options(query, out.json_body(raw))
        obj, gone = store.delete(rtype, route.namespace, route.name, options)
        out.send_json(200, _success(rtype, route.name, obj) if gone and rtype is not r.POD else obj)
    elif verb == "deletecollection":
        out.send_json(200, _delete_collection(store, route, query, out.json_body(raw)))


def _object(out: Responder, raw: bytes) -> dict[str, Any]:
    body = out.json_body(raw)
    if not isinstance(body, dict):
        raise errors.bad_request("the request body must be a JSON object")
    return body


def _list(store: ObjectStore, route: Route, query: dict[str, str]) -> dict[str, Any]:
    predicate = routes.selector_predicate(route.rtype, query)
    items, rv = store.select(route.rtype, route.namespace or None, predicate)
    metadata: dict[str, Any] = {"resourceVersion": str(rv)}
    if query.get("continue"):
        rv, after = routes.parse_continue(query["continue"])
        metadata["resourceVersion"] = str(rv)
        items = [item for item in items if _position(item) > after]
    limit = int(query.get("limit") or 0)
    if 0 < limit < len(items):
        metadata["continue"] = routes.continue_token(rv, _position(items[limit - 1]))
        metadata["remainingItemCount"] = len(items) - limit
        items = items[:limit]
    for item in items:  # typed lists carry kind and apiVersion once, on the list
        item.pop("kind", None)
        item.pop("apiVersion", None)
    rtype = route.rtype
    return {"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version,
            "metadata": metadata, "items": items}  # fmt: skip


def _position(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace", ""), meta["name"])


def _delete_collection(
    store: ObjectStore, route: Route, query: dict[str, str], body: Any
) -> dict[str, Any]:
    options = routes.delete_options(query, body)
    listed = _list(store, route, query)
    for item in listed["items"]:
        meta = item["metadata"]
        store.delete(route.rtype, meta.get("namespace", ""), meta["name"], options)
    return listed


def _success(rtype: r.ResourceType, name: str, obj: dict[str, Any] | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": rtype.resource}
    if rtype.group:
        details["group"] = rtype.group
    if obj is not None:
        details["uid"] = obj["metadata"]["uid"]
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": details}  # fmt: skip


def _serve_log(out: Responder, backend: ApiBackend, route: Route, query: dict[str, str]) -> None:
    pod = backend.store.get(route.rtype, route.namespace, route.name)
    names = [c["name"] for c in pod.get("spec", {}).get("containers", [])]
    names += [c["name"] for c in pod.get("spec", {}).get("initContainers", [])]
    container = query.get("container", "")
    if not container:
        if len(pod.get("spec", {}).get("containers", [])) != 1:
            raise errors.bad_request(f"a container name must be specified for pod {route.name}, "
                                     f"choose one of: [{' '.join(names)}]")  # fmt: skip
        container = names[0]
    elif container not in names:
        raise errors.bad_request(f"container {container} is not valid for pod {route.name}")
    path, finished = backend.container_log(pod, container)
    tail_lines = int(query["tailLines"]) if query.get("tailLines") else None
    if query.get("follow", "").lower() in ("true", "1"):
        streams.stream_log(out, path, finished, tail_lines)
        return
    data = streams.tail(path.read_bytes(), tail_lines)
    if query.get("limitBytes"):
        data = data[: int(query["limitBytes"])]
    out.send_bytes(200, data, "text/plain")
