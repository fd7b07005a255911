"""Pipeline and stage phases, and the only moves between them."""

from __future__ import annotations

import enum

from tuneship.common.errors import FailedPrecondition


class Phase(enum.Enum):
    """The phase of a pipeline or of one of its stages."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED)


# RUNNING -> PENDING is a stage waiting for a retry after a transient failure;
# FAILED/CANCELLED -> PENDING is a user's Retry.
_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.RUNNING, Phase.CANCELLED, Phase.FAILED}),
    Phase.RUNNING: frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED, Phase.PENDING}),
    Phase.SUCCEEDED: frozenset(),
    Phase.FAILED: frozenset({Phase.PENDING}),
    Phase.CANCELLED: frozenset({Phase.PENDING}),
}


def check_move(what: str, current: Phase, target: Phase) -> Phase:
    """``target`` if ``current -> target`` is legal, else ``FailedPrecondition``."""
    if target not in _MOVES[current]:
        raise FailedPrecondition(
            f"{what} is {current.value} and cannot become {target.value}",
            hint="Retry applies to failed or cancelled pipelines; Cancel to unfinished ones",
        )
    return target
