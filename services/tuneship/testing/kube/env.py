"""What a container is started with: its argv and environment, built from the pod spec
the way the kubelet builds them.

- argv: ``command`` replaces the image's entrypoint (the fake's ``images`` table, since
  there are no image files) and ``args`` follow; ``$(VAR)`` in both is expanded from
  the container's environment, ``$$(VAR)`` is a literal ``$(VAR)``, and a reference to
  an undefined variable is left as written.
- env: ``envFrom`` (ConfigMaps and Secrets, with ``prefix``), then ``env`` (``value``,
  which may reference earlier variables, ``valueFrom.fieldRef``,
  ``secretKeyRef``/``configMapKeyRef``). A missing Secret, ConfigMap or key that is not
  ``optional`` is a ``ContainerConfigError`` (the kubelet's
  ``CreateContainerConfigError``). ``resourceFieldRef`` is not supported.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

# (kind, namespace, name) -> the object's data as text, or None if there is no such object.
DataLookup = Callable[[str, str, str], dict[str, str] | None]


class ContainerConfigError(Exception):
    """The container cannot be configured yet (``CreateContainerConfigError``)."""


class ImageError(Exception):
    """No entrypoint is known for the container's image (``ErrImagePull``)."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _REFERENCE.sub(replace, text)


def image_repository(image: str) -> str:
    """``registry:5000/team/app:1.2@sha256:...`` -> ``registry:5000/team/app``."""
    without_digest = image.split("@", 1)[0]
    head, _, last = without_digest.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def argv(
    container: Mapping[str, Any], images: Mapping[str, Sequence[str]], env: Mapping[str, str]
) -> list[str]:
    """The process argv; raises ``ImageError`` when the image has no known entrypoint."""
    image = str(container.get("image", ""))
    if container.get("command"):
        entry = [str(part) for part in container["command"]]
    else:
        known = images.get(image) or images.get(image_repository(image)) or images.get("*")
        if known is None:
            raise ImageError(
                f"fake kubelet: no entrypoint for image {image!r}; add it (or '*') to "
                "Kubelet.images, or give the container a command"
            )
        entry = list(known)
    args = [expand(str(arg), env) for arg in container.get("args") or []]
    return [expand(part, env) for part in entry] + args


def container_env(
    pod: Mapping[str, Any], container: Mapping[str, Any], lookup: DataLookup
) -> dict[str, str]:
    """The variables the pod spec gives ``container`` (not the kubelet's overlay)."""
    namespace = pod["metadata"].get("namespace", "")
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        env.update(_env_from(namespace, source, lookup))
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" in var:
            value = _value_from(pod, namespace, var["valueFrom"], lookup)
            if value is not None:
                env[name] = value
        else:
            env[name] = expand(str(var.get("value", "")), env)
    return env


def _env_from(namespace: str, source: Mapping[str, Any], lookup: DataLookup) -> dict[str, str]:
    prefix = str(source.get("prefix", ""))
    for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
        if key in source:
            ref = source[key]
            data = lookup(kind, namespace, ref["name"])
            if data is None:
                if ref.get("optional"):
                    return {}
                raise ContainerConfigError(f'{kind.lower()} "{ref["name"]}" not found')
            return {prefix + k: v for k, v in data.items() if _ENV_NAME.match(prefix + k)}
    return {}


def _value_from(
    pod: Mapping[str, Any], namespace: str, source: Mapping[str, Any], lookup: DataLookup
) -> str | None:
    if "fieldRef" in source:
        return field_ref(pod, str(source["fieldRef"]["fieldPath"]))
    for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
        if key in source:
            ref = source[key]
            data = lookup(kind, namespace, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    return None
                what = f'{kind.lower()} "{ref["name"]}"'
                missing = "not found" if data is None else f'has no key "{ref["key"]}"'
                raise ContainerConfigError(f"{what} {missing}")
            return data[ref["key"]]
    raise ContainerConfigError(f"fake kubelet: unsupported valueFrom {sorted(source)}")


def field_ref(pod: Mapping[str, Any], path: str) -> str:
    """The downward API's value for ``fieldPath`` (``metadata.labels['k']`` included)."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    keyed = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
    if keyed:
        return str((meta.get(keyed.group(1)) or {}).get(keyed.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"), "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs") or []),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs") or []),
    }  # fmt: skip
    if path not in simple:
        raise ContainerConfigError(f"fake kubelet: unsupported fieldRef {path!r}")
    return str(simple[path] or "")


def object_data(obj: Mapping[str, Any] | None) -> dict[str, str] | None:
    """A ConfigMap's ``data`` or a Secret's decoded ``data``, as text."""
    if obj is None:
        return None
    if obj.get("kind") == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    return {str(k): str(v) for k, v in (obj.get("data") or {}).items()}
