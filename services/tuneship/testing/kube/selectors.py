"""Label and field selectors, as the API server parses and applies them.

String label selectors (``?labelSelector=``): comma-separated requirements, each one of
``key``, ``!key``, ``key=value`` / ``key==value``, ``key!=value``, ``key in (a,b)``,
``key notin (a,b)``; ``!=`` and ``notin`` also match objects without the label, as in
Kubernetes. Field selectors (``?fieldSelector=``) support ``=``, ``==`` and ``!=`` on the
fields each resource allows (``metadata.name``/``metadata.namespace`` everywhere; the
others listed in ``_FIELDS``); any other field is a 400, as on a real server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tuneship.testing.kube.errors import bad_request

_REQUIREMENT = re.compile(
    r"^\s*(?:(?P<bang>!)\s*(?P<absent>[^\s=!,()]+)"
    r"|(?P<key>[^\s=!,()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\))?)\s*$"
)

# Besides metadata.name and metadata.namespace, the fields each resource can be selected
# on (the API server's field label conversion functions).
_FIELDS: dict[str, tuple[str, ...]] = {
    "pods": ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
             "spec.serviceAccountName", "status.phase", "status.podIP",
             "status.nominatedNodeName"),
    "events": ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
               "involvedObject.uid", "involvedObject.apiVersion",
               "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
               "reportingComponent", "source", "type"),
    "secrets": ("type",),
    "jobs": ("status.successful",),
    "replicasets": ("status.replicas",),
}  # fmt: skip


@dataclass(frozen=True)
class Requirement:
    """One parsed label requirement: ``op`` is exists, absent, eq, ne, in or notin."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this requirement."""
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "absent":
            return not present
        if self.op in ("eq", "in"):
            return present and value in self.values
        return not present or value not in self.values  # ne, notin


def parse_label_selector(text: str) -> list[Requirement]:
    """Parse a string label selector; raises a 400 ``ApiError`` on bad syntax."""
    requirements: list[Requirement] = []
    for part in _split_top_level(text):
        match = _REQUIREMENT.match(part)
        if not match:
            raise bad_request(f"unable to parse requirement: {part!r}")
        if match["absent"]:
            requirements.append(Requirement(match["absent"], "absent"))
        elif match["op"]:
            op = "ne" if match["op"] == "!=" else "eq"
            requirements.append(Requirement(match["key"], op, (match["value"],)))
        elif match["setop"]:
            values = tuple(v.strip() for v in match["values"].split(",") if v.strip())
            requirements.append(Requirement(match["key"], match["setop"], values))
        else:
            requirements.append(Requirement(match["key"], "exists"))
    return requirements


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def labels_match(requirements: list[Requirement], obj: Mapping[str, Any]) -> bool:
    """Whether an object's ``metadata.labels`` satisfy every requirement."""
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(requirement.matches(labels) for requirement in requirements)


def selector_object_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A ``LabelSelector`` object (``matchLabels`` + ``matchExpressions``) against labels.

    An empty selector matches everything; ``None`` matches nothing (as in the API).
    """
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "absent"}
    for expression in selector.get("matchExpressions") or []:
        values = tuple(expression.get("values") or ())
        if not Requirement(expression["key"], ops[expression["operator"]], values).matches(labels):
            return False
    return True


FieldPredicate = Callable[[Mapping[str, Any]], bool]


def parse_field_selector(text: str, resource: str) -> list[FieldPredicate]:
    """Parse a field selector for ``resource``; a field it cannot select on is a 400."""
    allowed = ("metadata.name", "metadata.namespace", *_FIELDS.get(resource, ()))
    predicates: list[FieldPredicate] = []
    for part in _split_top_level(text):
        match = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not match:
            raise bad_request(f"invalid selector: {part!r}; can't understand {part!r}")
        field, op, value = match.groups()
        if field not in allowed:
            raise bad_request(f"field label not supported: {field}")
        predicates.append(_field_predicate(field, op != "!=", value))
    return predicates


def _field_predicate(field: str, equal: bool, value: str) -> FieldPredicate:
    def predicate(obj: Mapping[str, Any]) -> bool:
        return (field_value(obj, field) == value) == equal

    return predicate


def field_value(obj: Mapping[str, Any], field: str) -> str:
    """The string a field selector compares: ``""`` for a missing field (like the server)."""
    if field == "source":
        return str(obj.get("source", {}).get("component", ""))
    node: Any = obj
    for part in field.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def fields_match(predicates: list[FieldPredicate], obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` satisfies every field requirement."""
    return all(predicate(obj) for predicate in predicates)
