"""RBAC as the API server's authorizer applies one namespaced Role, and the request log.

A request is described by the attributes the authorizer sees (``ApiRequest``). Token
``admin`` is a cluster admin; any other token ``t`` is the service account
``system:serviceaccount:<role namespace>:t`` bound to the one Role given to
``FakeKube`` (if any); a request without a token is ``system:anonymous``, bound to
nothing. Without a Role the server authorizes everything (``--authorization-mode=
AlwaysAllow``), anonymous requests included. Discovery paths (``/api``, ``/apis``,
``/version``) are open to everyone, as the ``system:discovery`` ClusterRole makes them
for authenticated users.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ADMIN_TOKEN = "admin"


@dataclass(frozen=True)
class ApiRequest:
    """One request as the authorizer sees it, and whether it was allowed.

    ``resource`` is the plural (``jobs``), ``subresource`` e.g. ``log`` or ``status``
    (empty if none); ``api_group`` is ``""`` for the core group. Non-resource requests
    (discovery) have an empty ``resource`` and their ``path``.
    """

    token: str
    verb: str
    api_group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    allowed: bool
    path: str = ""

    @property
    def rule_resource(self) -> str:
        """``pods/log`` style: how a Role names what this request touched."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def subject(token: str, namespace: str) -> str:
    """The user name a token authenticates as."""
    if token == ADMIN_TOKEN:
        return "system:admin"
    if not token:
        return "system:anonymous"
    return f"system:serviceaccount:{namespace}:{token}"


def role_allows(role: Mapping[str, Any] | None, namespace: str, request: ApiRequest) -> bool:
    """Whether ``role`` (None: allow everything) grants ``request``.

    A Role only grants within its own namespace; ``resourceNames`` restrict a rule to
    requests that name one of them (so never a list, watch or create).
    """
    if role is None or request.token == ADMIN_TOKEN:
        return True
    if not request.resource:
        return True
    if request.namespace != namespace or not request.token:
        return False
    return any(_rule_allows(rule, request) for rule in role.get("rules") or [])


def _rule_allows(rule: Mapping[str, Any], request: ApiRequest) -> bool:
    groups = rule.get("apiGroups") or []
    if "*" not in groups and request.api_group not in groups:
        return False
    verbs = rule.get("verbs") or []
    if "*" not in verbs and request.verb not in verbs:
        return False
    if not _resource_matches(rule.get("resources") or [], request):
        return False
    names = rule.get("resourceNames") or []
    return not names or request.name in names


def _resource_matches(resources: list[str], request: ApiRequest) -> bool:
    wanted = request.rule_resource
    for entry in resources:
        if entry in ("*", wanted):
            return True
        if request.subresource and entry in (f"*/{request.subresource}", f"{request.resource}/*"):
            return True
    return False


def denial_reason(request: ApiRequest, role_namespace: str) -> str:
    """The authorizer's sentence: ``User "..." cannot create resource "jobs" in API group
    "batch" in the namespace "ns"`` (``at the cluster scope`` without a namespace)."""
    where = (
        f'in the namespace "{request.namespace}"' if request.namespace else "at the cluster scope"
    )
    return (
        f'User "{subject(request.token, role_namespace)}" cannot {request.verb} resource '
        f'"{request.rule_resource}" in API group "{request.api_group}" {where}'
    )
