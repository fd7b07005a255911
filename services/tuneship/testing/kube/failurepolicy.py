"""A Job's ``podFailurePolicy``, evaluated for one failed pod as the Job controller does:
rules in order, the first that matches decides (``FailJob``, ``Ignore``, ``Count``;
``FailIndex`` acts as ``Count`` here, since the fake has no indexed Jobs); no match
means ``Count``.

``onExitCodes``: ``In`` matches a container (optionally only ``containerName``) that
terminated with one of ``values``; ``NotIn`` one that terminated with a non-zero
code not in ``values``. ``onPodConditions``: the pod has a condition of that ``type``
with that ``status`` (default ``True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    """What a failed pod means for its Job; ``message`` is set for ``FailJob``."""

    action: str
    message: str = ""


def judge(job: dict[str, Any], pod: dict[str, Any]) -> Verdict:
    """The action for a failed ``pod`` of ``job``."""
    rules = (job.get("spec", {}).get("podFailurePolicy") or {}).get("rules") or []
    for index, rule in enumerate(rules):
        matched = _exit_code_match(rule.get("onExitCodes"), pod) or _condition_match(
            rule.get("onPodConditions"), pod
        )
        if matched:
            action = rule["action"]
            message = f"{matched} matching {action} rule at index {index}"
            return Verdict("Count" if action == "FailIndex" else action, message)
    return Verdict("Count")


def _exit_code_match(requirement: dict[str, Any] | None, pod: dict[str, Any]) -> str:
    if not requirement:
        return ""
    meta, status = pod["metadata"], pod.get("status", {})
    wanted = {int(v) for v in requirement.get("values") or []}
    only = requirement.get("containerName")
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    for container in statuses:
        terminated = (container.get("state") or {}).get("terminated")
        if not terminated or (only and container["name"] != only):
            continue
        code = int(terminated.get("exitCode", 0))
        if requirement["operator"] == "In":
            hit = code in wanted
        else:
            hit = code != 0 and code not in wanted
        if hit:
            return (f"Container {container['name']} for pod {meta['namespace']}/{meta['name']} "
                    f"failed with exit code {code}")  # fmt: skip
    return ""


def _condition_match(requirements: list[dict[str, Any]] | None, pod: dict[str, Any]) -> str:
    meta = pod["metadata"]
    conditions = pod.get("status", {}).get("conditions") or []
    for requirement in requirements or []:
        for found in conditions:
            if found["type"] == requirement["type"] and found["status"] == requirement.get(
                "status", "True"
            ):
                return f"Pod {meta['namespace']}/{meta['name']} has condition {found['type']}"
    return ""
