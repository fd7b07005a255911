"""The three PATCH formats the API server accepts for built-in types.

- ``application/merge-patch+json``: RFC 7386 (``null`` deletes, lists replace).
- ``application/strategic-merge-patch+json`` (the python client's default for dict
  bodies): a merge patch in which the lists Kubernetes declares with a merge key
  (``containers`` by ``name``, ``conditions`` by ``type``, ``ports`` by
  ``containerPort``...) are merged item by item, ``finalizers`` are a set, and the
  ``$patch: delete|replace`` and ``$deleteFromPrimitiveList/<field>`` directives work.
  ``$setElementOrder`` and ``$retainKeys`` are accepted and ignored.
- ``application/json-patch+json``: RFC 6902 (add, remove, replace, move, copy, test).

Server-side apply (``application/apply-patch+yaml``) is not supported (415).
"""

from __future__ import annotations

import copy
from typing import Any

from tuneship.testing.kube.errors import ApiError, bad_request, unsupported_media_type

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

# patchMergeKey of the list fields in the types this fake serves (from the Go structs).
_MERGE_KEYS: dict[str, str] = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "volumes": "name", "env": "name", "imagePullSecrets": "name", "volumeMounts": "mountPath",
    "volumeDevices": "devicePath", "ports": "containerPort", "conditions": "type",
    "ownerReferences": "uid", "hostAliases": "ip", "resourceClaims": "name",
    "containerStatuses": "name", "initContainerStatuses": "name", "podIPs": "ip",
    "topologySpreadConstraints": "topologyKey",
}  # fmt: skip
_SET_LISTS = frozenset({"finalizers"})


def apply_patch(target: dict[str, Any], content_type: str, patch: Any) -> dict[str, Any]:
    """A new object: ``target`` patched by ``patch`` of ``content_type`` (target untouched).

    Raises ``ApiError`` 415 for an unknown content type and 400 for a malformed patch,
    or 422-like 400s for a failed JSON-patch ``test``.
    """
    media = content_type.split(";")[0].strip().lower()
    if media == JSON_PATCH:
        if not isinstance(patch, list):
            raise bad_request("json patch must be a list of operations")
        return json_patch(target, patch)
    if media not in (MERGE, STRATEGIC):
        raise unsupported_media_type(content_type)
    if not isinstance(patch, dict):
        raise bad_request("a merge patch must be a JSON object")
    if media == MERGE:
        return merge_patch(target, patch)
    return strategic_merge_patch(target, patch)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes strategic merge patch for the built-in types (see the module docstring)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [item for item in result.get(name) or [] if item not in value]
        elif key.startswith("$"):
            continue  # $setElementOrder/..., $retainKeys: ordering hints only
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            merged = strategic_merge_patch(result.get(key), value, key)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    return result


def _merge_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    items = list(copy.deepcopy(current)) if isinstance(current, list) else []
    if field in _SET_LISTS:
        return items + [value for value in patch if value not in items]
    merge_key = _MERGE_KEYS.get(field)
    if merge_key is None or not all(isinstance(item, dict) for item in patch):
        return [item for item in copy.deepcopy(patch) if item != {"$patch": "replace"}]
    if {"$patch": "replace"} in patch:
        return [item for item in copy.deepcopy(patch) if item != {"$patch": "replace"}]
    for item in patch:
        key = item.get(merge_key)
        index = next((i for i, old in enumerate(items) if old.get(merge_key) == key), None)
        if item.get("$patch") == "delete":
            if index is not None:
                items.pop(index)
        elif index is None:
            items.append(strategic_merge_patch({}, item))
        else:
            items[index] = strategic_merge_patch(items[index], item)
    return items


def json_patch(target: dict[str, Any], operations: list[Any]) -> dict[str, Any]:
    """RFC 6902 JSON patch; raises a 400/422 ``ApiError`` when an operation cannot apply."""
    document: Any = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise bad_request(f"invalid json patch operation: {operation!r}")
        op, path = operation["op"], _pointer(operation["path"])
        if op in ("add", "replace", "test"):
            value = copy.deepcopy(operation.get("value"))
        elif op in ("move", "copy"):
            value = copy.deepcopy(_get(document, _pointer(operation["from"])))
            if op == "move":
                document = _remove(document, _pointer(operation["from"]))
        if op == "remove":
            document = _remove(document, path)
        elif op == "test":
            if _get(document, path) != value:
                raise ApiError(422, "Invalid", f"the test operation failed at {operation['path']}")
        elif op == "replace":
            _get(document, path)  # must exist
            document = _remove(document, path)
            document = _add(document, path, value)
        elif op in ("add", "move", "copy"):
            document = _add(document, path, value)
        else:
            raise bad_request(f"unknown json patch operation {op!r}")
    if not isinstance(document, dict):
        raise bad_request("json patch replaced the whole object with a non-object")
    return document


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _get(document: Any, path: list[str]) -> Any:
    node = document
    for part in path:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise bad_request(f"json patch: path /{'/'.join(path)} does not exist") from None
    return node


def _add(document: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent = _get(document, path[:-1])
    last = path[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if not 0 <= index <= len(parent):
            raise bad_request(f"json patch: index {last} out of range")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise bad_request(f"json patch: cannot add below /{'/'.join(path[:-1])}")
    return document


def _remove(document: Any, path: list[str]) -> Any:
    if not path:
        return None
    parent = _get(document, path[:-1])
    _get(document, path)
    if isinstance(parent, list):
        parent.pop(int(path[-1]))
    else:
        del parent[path[-1]]
    return document
