"""``ApiError``: a failed request, carrying the ``Status`` body the API server sends.

The messages and reasons copy the API server's (``k8s.io/apimachinery`` ``errors``
package), because clients match on ``reason`` and people read ``message``.
"""

from __future__ import annotations

from typing import Any

from tuneship.testing.kube.resources import ResourceType


class ApiError(Exception):
    """A request the API server answers with a ``Status`` of ``status: Failure``."""

    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        """The ``meta/v1 Status`` body."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(rtype: ResourceType, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"kind": rtype.resource}
    if name:
        details["name"] = name
    if rtype.group:
        details["group"] = rtype.group
    return details


def not_found(rtype: ResourceType, name: str) -> ApiError:
    """404 ``NotFound``: ``jobs.batch "x" not found``."""
    return ApiError(404, "NotFound", f'{rtype.qualified} "{name}" not found', _details(rtype, name))


def already_exists(rtype: ResourceType, name: str) -> ApiError:
    """409 ``AlreadyExists``: ``jobs.batch "x" already exists``."""
    return ApiError(
        409, "AlreadyExists", f'{rtype.qualified} "{name}" already exists', _details(rtype, name)
    )


_MODIFIED = (
    "the object has been modified; please apply your changes to the latest version and try again"
)
_PATCH_TYPES = (
    "application/json-patch+json, application/merge-patch+json, "
    "application/strategic-merge-patch+json"
)


def conflict(rtype: ResourceType, name: str, why: str = "") -> ApiError:
    """409 ``Conflict``: a stale ``resourceVersion`` (or a failed precondition)."""
    why = why or _MODIFIED
    message = f'Operation cannot be fulfilled on {rtype.qualified} "{name}": {why}'
    return ApiError(409, "Conflict", message, _details(rtype, name))


def invalid(rtype: ResourceType, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 ``Invalid``: ``Job.batch "x" is invalid: <field>: <why>``; ``causes`` = (field, why)."""
    kind = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind
    listed = ", ".join(f"{field}: {why}" for field, why in causes)
    shown = f"[{listed}]" if len(causes) > 1 else listed
    details: dict[str, Any] = {
        "name": name,
        "kind": rtype.kind,
        "causes": [
            {"reason": "FieldValueInvalid", "message": why, "field": field} for field, why in causes
        ],
    }
    if rtype.group:
        details["group"] = rtype.group
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {shown}', details)


def forbidden(rtype: ResourceType, name: str, why: str) -> ApiError:
    """403 ``Forbidden``: ``jobs.batch "x" is forbidden: <why>`` (no name for collections)."""
    subject = f'{rtype.qualified} "{name}"' if name else rtype.qualified
    return ApiError(403, "Forbidden", f"{subject} is forbidden: {why}", _details(rtype, name))


def bad_request(message: str) -> ApiError:
    """400 ``BadRequest``."""
    return ApiError(400, "BadRequest", message)


def method_not_allowed() -> ApiError:
    """405 ``MethodNotAllowed``."""
    message = "the server does not allow this method on the requested resource"
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> ApiError:
    """415 ``UnsupportedMediaType``."""
    message = (
        "the body of the request was in an unknown format - accepted media types include: "
        f'{_PATCH_TYPES}; got "{content_type}"'
    )
    return ApiError(415, "UnsupportedMediaType", message)


def expired(requested: int, oldest: int) -> ApiError:
    """410 ``Expired``: a watch from a resourceVersion older than the kept history."""
    return ApiError(410, "Expired", f"too old resource version: {requested} ({oldest})")


def unauthorized() -> ApiError:
    """401 ``Unauthorized``: credentials other than a bearer token."""
    return ApiError(401, "Unauthorized", "Unauthorized")


def route_not_found(path: str) -> ApiError:
    """404 for a path no resource is served at."""
    message = f'the server could not find the requested resource ("{path}")'
    return ApiError(404, "NotFound", message, {})
