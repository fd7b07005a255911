"""The tuneship error hierarchy.

Every error says what is wrong, where (a file:line or a spec field path) and what to
do. Each type carries its retry semantics and the gRPC status it maps to (by name, so
that domain code never imports grpc); one server interceptor does the mapping.
"""

from __future__ import annotations


class TuneshipError(Exception):
    """Base of all expected failures.

    ``where`` locates the problem (``data.jsonl:12``, ``train.lora.r``); ``hint`` says
    what to do about it. ``retryable`` tells the scheduler whether trying the same
    work again can succeed.
    """

    status = "INTERNAL"
    retryable = False

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class InvalidInput(TuneshipError):
    """The request or its data is wrong; the same input will fail again."""

    status = "INVALID_ARGUMENT"


class NotFound(TuneshipError):
    """A named model, artifact or task does not exist."""

    status = "NOT_FOUND"


class FailedPrecondition(TuneshipError):
    """The input is well-formed but cannot be processed as it is (e.g. vocab mismatch)."""

    status = "FAILED_PRECONDITION"


class ToolchainMissing(FailedPrecondition):
    """A llama.cpp binary or script is not installed; a make target builds it."""


class Busy(TuneshipError):
    """The worker is at capacity; try again later."""

    status = "RESOURCE_EXHAUSTED"
    retryable = True


class Unavailable(TuneshipError):
    """A dependency (store, server, subprocess) is down for now."""

    status = "UNAVAILABLE"
    retryable = True


class Cancelled(TuneshipError):
    """The work was cancelled on request; nothing was committed."""

    status = "CANCELLED"


class Aborted(TuneshipError):
    """The work was interrupted (e.g. a worker restarted); trying again resumes it."""

    status = "ABORTED"
    retryable = True


class DeadlineExceeded(TuneshipError):
    """The work took longer than allowed or went silent; trying again may succeed."""

    status = "DEADLINE_EXCEEDED"
    retryable = True


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID_INPUT = 3
"""Exit code of a one-task worker (``tuneship serve COMPONENT --once``) whose task
failed in a way no retry can fix (``INVALID_ARGUMENT`` / ``FAILED_PRECONDITION`` /
``NOT_FOUND``); the chart's Job ``podFailurePolicy`` fails the Job at once on it."""


def exit_code_of(error: TuneshipError | None) -> int:
    """The process exit code for a task that ended with ``error`` (None: succeeded)."""
    if error is None:
        return EXIT_OK
    if error.status in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND"):
        return EXIT_INVALID_INPUT
    return EXIT_FAILED
