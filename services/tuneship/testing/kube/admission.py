"""What the API server does to an object before storing it: defaults and validation.

Defaults are the ones clients read back (a Job's selector and pod labels, a pod's
``restartPolicy`` and ``terminationGracePeriodSeconds``, a Service's ``targetPort``...),
plus Kueue's mutating webhook, which suspends a Job labelled with a queue.
Validation covers what catches real mistakes early: names, label keys and values
(a task id is not a valid label value), a Job's ``restartPolicy`` and selector, a
Deployment's selector. Everything else is accepted as written.
"""

from __future__ import annotations

import base64
import random
import re
from typing import Any

from tuneship.testing.kube import resources as r
from tuneship.testing.kube.crds import schema_causes
from tuneship.testing.kube.errors import invalid
from tuneship.testing.kube.resources import ResourceType
from tuneship.testing.kube.selectors import selector_object_matches

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
LEGACY_JOB_UID_LABEL = "controller-uid"
LEGACY_JOB_NAME_LABEL = "job-name"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE_HELP = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)

_KEY_HELP = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc')"
)

Causes = list[tuple[str, str]]


def default(rtype: ResourceType, obj: dict[str, Any]) -> None:
    """Fill in the server-side defaults of a new object (in place; metadata already set)."""
    spec = obj.setdefault("spec", {}) if rtype.resource not in _SPECLESS else None
    if rtype is r.POD and spec is not None:
        default_pod_spec(spec)
        status = obj.setdefault("status", {})
        status.setdefault("phase", "Pending")
        status.setdefault("qosClass", _qos_class(spec))
    elif rtype is r.NAMESPACE:
        obj.setdefault("status", {}).setdefault("phase", "Active")
    elif rtype is r.JOB and spec is not None:
        _default_job(obj, spec)
    elif rtype in (r.DEPLOYMENT, r.REPLICASET) and spec is not None:
        spec.setdefault("replicas", 1)
        if rtype is r.DEPLOYMENT:
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            spec.setdefault("strategy", {"type": "RollingUpdate"})
        default_pod_spec(spec.get("template", {}).get("spec") or {})
    elif rtype is r.SERVICE and spec is not None:
        _default_service(spec)
    elif rtype is r.SECRET:
        _default_secret(obj)


_SPECLESS = frozenset({"configmaps", "secrets", "events", "endpointslices"})


def default_pod_spec(spec: dict[str, Any], *, restart_policy: str | None = "Always") -> None:
    """Pod spec defaults (also applied to templates, as the API server does); a Job's
    template gets no ``restartPolicy`` default (``restart_policy=None``): validation
    demands one."""
    if restart_policy is not None:
        spec.setdefault("restartPolicy", restart_policy)
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        image = str(container.get("image", ""))
        tagged = ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
        container.setdefault("imagePullPolicy", "IfNotPresent" if tagged else "Always")
        for port in container.get("ports", []):
            port.setdefault("protocol", "TCP")


def _qos_class(spec: dict[str, Any]) -> str:
    containers = spec.get("containers") or []
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("limits") or r.get("requests") for r in resources):
        return "BestEffort"
    guaranteed = all(
        all((res.get("limits") or {}).get(name) for name in ("cpu", "memory"))
        and (res.get("requests") or res.get("limits")) == res.get("limits")
        for res in resources
    )
    return "Guaranteed" if guaranteed else "Burstable"


def _default_job(obj: dict[str, Any], spec: dict[str, Any]) -> None:
    metadata = obj["metadata"]
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("manualSelector", False)
    spec.setdefault("suspend", False)
    replacement = "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed"
    spec.setdefault("podReplacementPolicy", replacement)
    if QUEUE_LABEL in (metadata.get("labels") or {}):
        spec["suspend"] = True  # Kueue's webhook: a queued Job waits for admission
    uid, name = metadata["uid"], metadata["name"]
    if not spec.get("manualSelector"):
        spec["selector"] = {"matchLabels": {JOB_UID_LABEL: uid}}
    template = spec.setdefault("template", {})
    labels = template.setdefault("metadata", {}).setdefault("labels", {})
    labels.update({JOB_UID_LABEL: uid, JOB_NAME_LABEL: name,
                   LEGACY_JOB_UID_LABEL: uid, LEGACY_JOB_NAME_LABEL: name})  # fmt: skip
    default_pod_spec(template.setdefault("spec", {}), restart_policy=None)


def _default_service(spec: dict[str, Any]) -> None:
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if "clusterIP" not in spec and spec["type"] != "ExternalName":
        # Not reachable: a fake cluster has no kube-proxy. Clients use EndpointSlices.
        spec["clusterIP"] = f"10.96.{random.randint(1, 254)}.{random.randint(1, 254)}"
    if "clusterIP" in spec:
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
    for port in spec.get("ports", []):
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))


def _default_secret(obj: dict[str, Any]) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None) or {}
    data = obj.setdefault("data", {})
    for key, value in string_data.items():
        data[key] = base64.b64encode(str(value).encode()).decode()


def validate(rtype: ResourceType, obj: dict[str, Any]) -> None:
    """Raise a 422 ``Invalid`` ``ApiError`` listing every problem found, else return."""
    metadata = obj.get("metadata") or {}
    name = str(metadata.get("name", ""))
    causes: Causes = _name_causes(rtype, name)
    causes += _map_causes("metadata.labels", metadata.get("labels"), values=True)
    causes += _map_causes("metadata.annotations", metadata.get("annotations"), values=False)
    spec = obj.get("spec") or {}
    if rtype is r.POD:
        causes += _pod_spec_causes("spec", spec)
    elif rtype is r.JOB:
        causes += _job_causes(spec)
    elif rtype in (r.DEPLOYMENT, r.REPLICASET):
        causes += _selector_causes(spec)
        causes += _pod_spec_causes("spec.template.spec", spec.get("template", {}).get("spec", {}))
    causes += schema_causes(obj)
    if causes:
        raise invalid(rtype, name, causes)


def _name_causes(rtype: ResourceType, name: str) -> Causes:
    if not name:
        return [("metadata.name", "Required value: name or generateName is required")]
    if rtype in (r.SERVICE, r.NAMESPACE):
        ok, limit, what = _DNS_1035.match(name), 63, "a DNS-1035 label"
    elif rtype is r.JOB:
        ok, limit, what = _DNS_LABEL.match(name), 63, "a DNS-1123 label"
    else:
        ok, limit, what = _SUBDOMAIN.match(name), 253, "a lowercase RFC 1123 subdomain"
    if not ok:
        return [("metadata.name", f'Invalid value: "{name}": must be {what}')]
    if len(name) > limit:
        return [("metadata.name", f'Invalid value: "{name}": must be no more than {limit} '
                 "characters")]  # fmt: skip
    return []


def _map_causes(field: str, mapping: Any, *, values: bool) -> Causes:
    causes: Causes = []
    for key, value in (mapping or {}).items():
        prefix, _, name = key.rpartition("/")
        bad_prefix = bool(prefix) and not _SUBDOMAIN.match(prefix)
        if bad_prefix or len(name) > 63 or not _LABEL_NAME.match(name):
            causes.append((field, f'Invalid value: "{key}": {_KEY_HELP}'))
        if not isinstance(value, str):
            causes.append((f"{field}[{key}]", f"Invalid value: {value!r}: must be a string"))
        elif values and (len(value) > 63 or (value and not _LABEL_NAME.match(value))):
            causes.append((field, f'Invalid value: "{value}": {_LABEL_VALUE_HELP}'))
    return causes


def _pod_spec_causes(field: str, spec: dict[str, Any]) -> Causes:
    containers = spec.get("containers") or []
    if not containers:
        return [(f"{field}.containers", "Required value")]
    causes: Causes = []
    for index, container in enumerate(containers):
        where = f"{field}.containers[{index}]"
        if not _DNS_LABEL.match(str(container.get("name", ""))):
            causes.append((f"{where}.name", f'Invalid value: "{container.get("name", "")}"'))
        if not container.get("image"):
            causes.append((f"{where}.image", "Required value"))
    return causes


def _job_causes(spec: dict[str, Any]) -> Causes:
    template = spec.get("template") or {}
    pod_spec = template.get("spec") or {}
    causes = _pod_spec_causes("spec.template.spec", pod_spec)
    restart = pod_spec.get("restartPolicy")
    if restart not in ("Never", "OnFailure"):
        causes.append(("spec.template.spec.restartPolicy",
                       'Required value: valid values: "OnFailure", "Never"'))  # fmt: skip
    elif spec.get("podFailurePolicy") and restart != "Never":
        causes.append(("spec.template.spec.restartPolicy",
                       'Invalid value: "OnFailure": only "Never" is supported when '
                       "podFailurePolicy is specified"))  # fmt: skip
    causes += _selector_causes(spec)
    return causes


def _selector_causes(spec: dict[str, Any]) -> Causes:
    selector = spec.get("selector")
    if selector is None:
        return [("spec.selector", "Required value")]
    labels = spec.get("template", {}).get("metadata", {}).get("labels") or {}
    if not selector_object_matches(selector, labels):
        why = f"Invalid value: {labels}: `selector` does not match template `labels`"
        return [("spec.template.metadata.labels", why)]
    return []
