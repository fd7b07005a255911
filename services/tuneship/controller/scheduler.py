"""Runs each pipeline's stages in order on the stage workers.

- Per-stage concurrency limits (= worker capacity); the highest priority, then the
  oldest pipeline goes first.
- A stage attempt's task_id is persisted *before* the worker is called, so a restarted
  controller re-attaches to it (the worker replays or resumes it) instead of starting
  a duplicate.
- Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED) are
  retried with exponential backoff; INVALID_ARGUMENT / FAILED_PRECONDITION / NOT_FOUND
  fail the pipeline at once.
- A worker stream silent for longer than the heartbeat timeout counts as
  DEADLINE_EXCEEDED. Cancel reaches the running stage through the worker's Cancel.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from tuneship.common import layout
from tuneship.common.codec import event_to_record
from tuneship.common.errors import FailedPrecondition
from tuneship.common.events import Event, Metrics
from tuneship.common.jobs import Artifact, StageJob, StageOutcome
from tuneship.common.logs import LEVELS, in_task_context, task_context
from tuneship.common.stages import STAGES
from tuneship.controller.database import StateUnavailable
from tuneship.controller.machine import Phase
from tuneship.controller.state import PipelineView, StateStore

log = logging.getLogger("tuneship.controller")


class StageFailure(Exception):
    """A stage attempt ended without a result (status code name, message).

    ``reached`` is False when no worker ever answered (connection refused, no Ready
    pod): the attempt did not start, so it is waited out rather than counted."""

    def __init__(self, code: str, message: str, retryable: bool, reached: bool = True) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.retryable = code, message, retryable
        self.reached = reached


@dataclass(frozen=True)
class Numbered:
    """An event of the worker's task stream with its number there (1, 2, ...): what a
    re-attaching controller tells the worker to skip."""

    seq: int
    event: Event


@dataclass(frozen=True)
class Waiting:
    """Why a started attempt has no worker yet (queued in Kueue, no node for its pod);
    ``reason`` empty: it has one now. The stage stays RUNNING, shown as waiting."""

    reason: str


class StageCall(Protocol):
    """One running stage RPC: iterate events (``None`` = keepalive), then the outcome;
    ``cancel`` stops following it."""

    def __iter__(self) -> Iterator[Event | Numbered | StageOutcome | Waiting | None]: ...

    def cancel(self) -> None: ...


class Workers(Protocol):
    """The stage workers as the scheduler sees them (worker providers in practice)."""

    def run(self, stage: str, job: StageJob, reattach: bool = False) -> StageCall:
        """Start an attempt; ``reattach``: it may already run (the controller restarted)."""
        ...

    def cancel(self, stage: str, task_id: str) -> bool: ...

    def capacity(self, stage: str) -> int | None:
        """Attempts of ``stage`` that can run at once now (None: use the limit)."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient failures."""

    max_attempts: int = 4
    """Attempts per stage, the first included."""
    initial_backoff_s: float = 2.0
    max_backoff_s: float = 120.0
    multiplier: float = 2.0

    def backoff_s(self, attempts: int) -> float:
        return min(
            self.max_backoff_s, self.initial_backoff_s * self.multiplier ** max(0, attempts - 1)
        )


InputsFor = Callable[[PipelineView, str], dict[str, Artifact]]


class StageObserver(Protocol):
    """Told about stage ends and training throughput (the Prometheus metrics)."""

    def stage_finished(self, pipeline: str, stage: str, outcome: str, seconds: float) -> None: ...

    def training_throughput(self, pipeline: str, tokens_per_s: float) -> None: ...


class _NoObserver:
    def stage_finished(self, pipeline: str, stage: str, outcome: str, seconds: float) -> None:
        return None

    def training_throughput(self, pipeline: str, tokens_per_s: float) -> None:
        return None


@dataclass
class _Active:
    pipeline_id: str
    stage: str
    task_id: str
    call: StageCall | None = None
    cancelled: bool = False
    thread: threading.Thread | None = None
    waiting: str = ""


@dataclass
class Scheduler:
    """Drives pending pipelines to completion. ``start`` it once; ``stop`` on shutdown."""

    state: StateStore
    workers: Workers
    inputs_for: InputsFor
    limits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 1))
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    heartbeat_timeout_s: float = 60.0
    unreachable_timeout_s: float = 600.0
    """How long a stage waits for its workers to come back (a restarting pod, a pool
    scaling up) before it fails; waiting does not use up attempts."""
    poll_s: float = 0.5
    output_prefix: Callable[[str, str], str] = layout.stage_prefix
    observer: StageObserver = field(default_factory=_NoObserver)
    _active: dict[tuple[str, str], _Active] = field(default_factory=dict)
    _unreachable: dict[tuple[str, str], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            active = list(self._active.values())
        for item in active:
            if item.call is not None:
                item.call.cancel()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def running(self, stage: str) -> int:
        with self._lock:
            return sum(1 for a in self._active.values() if a.stage == stage)

    def limit(self, stage: str) -> int:
        """Attempts of ``stage`` allowed at once: the workers' capacity when they know
        it (a pool's Ready pods), capped by the configured limit when one is set."""
        capacity = self.workers.capacity(stage)
        configured = self.limits.get(stage)
        if capacity is None:
            return configured if configured is not None else 1
        return capacity if configured is None else min(capacity, configured)

    def waiting(self, pipeline_id: str, stage: str) -> str:
        """Why the running ``stage`` of ``pipeline_id`` has no worker yet ("" if it has)."""
        with self._lock:
            active = self._active.get((pipeline_id, stage))
            return active.waiting if active is not None else ""

    def _loop(self) -> None:
        while not self._stop.is_set():
            seen = self.state.generation  # a write during the tick wakes the wait at once
            try:
                self.tick()
            except StateUnavailable as error:
                log.warning("scheduler tick: %s; trying again", error.message)
            except Exception:
                log.exception("scheduler tick failed; trying again")
            self.state.wait_for_change(self.poll_s, seen)

    def tick(self) -> None:
        """Start (or re-attach) every stage that may run now."""
        now = time.time()
        # Read the drivers before the state: a driver records its stage's end before it
        # leaves ``_active``, so a stage seen RUNNING here without a driver is orphaned.
        with self._lock:
            driven = set(self._active)
        running = {stage: sum(1 for _, s in driven if s == stage) for stage in STAGES}
        limits = {stage: self.limit(stage) for stage in STAGES}
        for current in self.state.next_stages(per_stage=max(limits.values())):
            pipeline_id, stage = current.pipeline_id, current.name
            if (pipeline_id, stage) in driven:
                continue
            if current.phase is Phase.RUNNING:
                pipeline = self.state.get(pipeline_id)
                self._launch(pipeline, stage, current.task_id, current.attempts, True)
            elif current.phase is Phase.PENDING and current.not_before <= now:
                if running[stage] >= limits[stage]:
                    continue
                running[stage] += 1
                attempts = current.attempts + 1
                task_id = f"{pipeline_id}.{stage}.{attempts}"
                message = f"{stage} started (attempt {attempts})"
                # One transaction: the task_id is stored before the worker hears of it.
                pipeline = self.state.start_stage(pipeline_id, stage, task_id, attempts, message)
                with task_context(attempt=attempts, task_id=task_id):
                    self._logged(pipeline_id, stage, message)
                self._launch(pipeline, stage, task_id, attempts)

    def _launch(
        self, pipeline: PipelineView, stage: str, task_id: str, attempts: int,
        reattach: bool = False,
    ) -> None:  # fmt: skip
        active = _Active(pipeline.id, stage, task_id)
        with self._lock:
            self._active[(pipeline.id, stage)] = active
        # Re-attaching: the worker replays its task from the start; skip what is recorded.
        recorded = self.state.last_task_seq(pipeline.id, task_id) if reattach else 0
        job = StageJob(
            task_id, pipeline.id, pipeline.spec_json, self.inputs_for(pipeline, stage),
            self.output_prefix(pipeline.id, stage), attempts, after_seq=recorded,
        )  # fmt: skip
        ids = {"pipeline_id": pipeline.id, "stage": stage, "attempt": attempts, "task_id": task_id}
        active.thread = threading.Thread(
            target=in_task_context(self._drive, **ids), args=(active, job, reattach),
            name=f"drive-{task_id}", daemon=True,
        )  # fmt: skip
        active.thread.start()

    def _drive(self, active: _Active, job: StageJob, reattach: bool) -> None:
        try:
            self._drive_to_end(active, job, reattach)
        except StateUnavailable:
            # The database is down for longer than a call waits. The stage stays RUNNING
            # in it; once it is back, a tick finds the stage without a driver and
            # re-attaches to the same task_id, so the work is neither lost nor repeated.
            log.warning("state database unavailable while driving %s; will re-attach",
                        active.task_id)  # fmt: skip
            if active.call is not None:
                active.call.cancel()
        finally:
            with self._lock:
                self._active.pop((active.pipeline_id, active.stage), None)

    def _drive_to_end(self, active: _Active, job: StageJob, reattach: bool) -> None:
        try:
            outcome = self._consume(active, job, reattach)
        except StageFailure as failure:
            if not self._stop.is_set():  # a stopping controller leaves the stage RUNNING
                self._failed(active, failure)
        except StateUnavailable:
            raise
        except Exception as error:  # a bug must not leave the stage running unwatched
            log.exception("driving %s failed", active.task_id)
            if not self._stop.is_set():
                message = f"internal error in the controller: {type(error).__name__}: {error}"
                self._failed(active, StageFailure("INTERNAL", message, False))
        else:
            self._succeeded(active.pipeline_id, active.stage, outcome)

    def _consume(self, active: _Active, job: StageJob, reattach: bool) -> StageOutcome:
        call = self.workers.run(active.stage, job, reattach)
        active.call = call
        last_seen = [time.monotonic()]
        silent = threading.Event()
        done = threading.Event()

        def watchdog() -> None:
            while not done.wait(1.0):
                if time.monotonic() - last_seen[0] > self.heartbeat_timeout_s:
                    silent.set()
                    call.cancel()
                    return

        threading.Thread(target=watchdog, daemon=True).start()
        try:
            for item in call:
                last_seen[0] = time.monotonic()
                if isinstance(item, StageOutcome):
                    return item
                if isinstance(item, Waiting):
                    self._waiting(active, item.reason)
                elif isinstance(item, Numbered):
                    self._record_event(active.pipeline_id, active.stage, item.event,
                                       task=active.task_id, task_seq=item.seq)  # fmt: skip
                elif item is not None:
                    self._record_event(active.pipeline_id, active.stage, item)
        except StageFailure as failure:
            if silent.is_set():
                self.workers.cancel(active.stage, active.task_id)  # best effort: free the slot
                raise StageFailure(
                    "DEADLINE_EXCEEDED",
                    f"{active.stage} worker sent nothing for {self.heartbeat_timeout_s:.0f}s",
                    True,
                ) from failure
            if active.cancelled:
                raise StageFailure("CANCELLED", "cancelled by the user", False) from failure
            raise
        finally:
            done.set()
        raise StageFailure("ABORTED", f"{active.stage} stream ended without a result", True)

    def _waiting(self, active: _Active, reason: str) -> None:
        if reason == active.waiting:
            return
        active.waiting = reason
        if reason:
            self._record(active.pipeline_id, active.stage, f"{active.stage} {reason}")

    def _succeeded(self, pipeline_id: str, stage: str, outcome: StageOutcome) -> None:
        self._unreachable.pop((pipeline_id, stage), None)
        outputs = {k: vars(v) for k, v in outcome.outputs.items()}
        note = " (reused a committed result)" if outcome.cached else ""
        message = f"{stage} succeeded{note}"
        done = "pipeline succeeded" if stage == STAGES[-1] else ""
        # One transaction; the stage's event is recorded before the stage moves on, so the
        # log reads in the order things happened.
        view = self.state.finish_stage(pipeline_id, stage, outputs, outcome.summary, message, done)
        self._logged(pipeline_id, stage, message)
        self.observer.stage_finished(pipeline_id, stage, "succeeded", view.finished - view.started)
        if done:
            self._logged(pipeline_id, "", done)

    def _failed(self, active: _Active, failure: StageFailure) -> None:
        pipeline_id, stage = active.pipeline_id, active.stage
        view = self.state.get(pipeline_id)
        outcome = "cancelled" if active.cancelled or view.phase is Phase.CANCELLED else "failed"
        seconds = time.time() - view.stage(stage).started
        self.observer.stage_finished(pipeline_id, stage, outcome, seconds)
        if active.cancelled or view.phase is Phase.CANCELLED:
            self.state.update_stage(pipeline_id, stage, phase=Phase.CANCELLED, finished=time.time())
            self._record(pipeline_id, stage, f"{stage} cancelled")
            return
        current = view.stage(stage)
        attempts = current.attempts
        if self._wait_for_workers(active, failure, attempts):
            return
        self._unreachable.pop((pipeline_id, stage), None)
        if failure.retryable and attempts - current.retry_base < self.retry.max_attempts:
            wait = self.retry.backoff_s(attempts - current.retry_base)
            self.state.update_stage(
                pipeline_id, stage, phase=Phase.PENDING, not_before=time.time() + wait,
                error=failure.message, error_code=failure.code,
            )  # fmt: skip
            note = f"{stage} attempt {attempts} failed ({failure.code}); retrying in {wait:.0f}s"
            self._record(pipeline_id, stage, f"{note}: {failure.message}", level="warning")
            return
        self.state.update_stage(
            pipeline_id, stage, phase=Phase.FAILED, finished=time.time(),
            error=failure.message, error_code=failure.code,
        )  # fmt: skip
        self.state.set_pipeline(pipeline_id, Phase.FAILED, error=f"{stage}: {failure.message}")
        self._record(pipeline_id, stage, f"{stage} failed ({failure.code}): {failure.message}",
                     level="error")  # fmt: skip

    def _wait_for_workers(self, active: _Active, failure: StageFailure, attempts: int) -> bool:
        """True when no worker answered and the wait goes on: the attempt is handed back
        (same number, same task id) and tried again shortly, uncounted."""
        if failure.reached or failure.code != "UNAVAILABLE":
            return False
        key = (active.pipeline_id, active.stage)
        now = time.time()
        since = self._unreachable.setdefault(key, now)
        if now - since >= self.unreachable_timeout_s:
            self._unreachable.pop(key, None)
            failure.message = (f"no {active.stage} worker answered for "
                               f"{self.unreachable_timeout_s:.0f}s: {failure.message}")  # fmt: skip
            failure.retryable = False
            return False
        self.state.update_stage(
            active.pipeline_id, active.stage, phase=Phase.PENDING, attempts=attempts - 1,
            not_before=now + self.retry.initial_backoff_s, error=failure.message,
            error_code=failure.code,
        )  # fmt: skip
        if since == now:  # said once per outage, not once per try
            self._record(
                active.pipeline_id, active.stage,
                f"{active.stage} workers unreachable ({failure.message}); waiting up to "
                f"{self.unreachable_timeout_s:.0f}s for them", level="warning",
            )  # fmt: skip
        return True

    def cancel(self, pipeline_id: str) -> None:
        """Cancel a pipeline and stop its running stage on the worker."""
        view = self.state.get(pipeline_id)
        self.state.set_pipeline(pipeline_id, Phase.CANCELLED, error="cancelled by the user")
        for stage in view.stages:
            if stage.phase is Phase.PENDING:
                self.state.update_stage(pipeline_id, stage.name, phase=Phase.CANCELLED)
        with self._lock:
            active = [a for a in self._active.values() if a.pipeline_id == pipeline_id]
        for item in active:
            item.cancelled = True
            self.workers.cancel(item.stage, item.task_id)
        self._record(pipeline_id, "", "pipeline cancelled")

    def retry_pipeline(self, pipeline_id: str) -> None:
        """Run a failed or cancelled pipeline again from its first unfinished stage;
        ``FailedPrecondition`` for a pipeline that is pending, running or succeeded."""
        view = self.state.get(pipeline_id)
        if view.phase not in (Phase.FAILED, Phase.CANCELLED):
            raise FailedPrecondition(
                f"pipeline {pipeline_id} is {view.phase.value}: Retry applies to failed or "
                "cancelled pipelines",
                hint="watch it (`tuneship watch ID`), or cancel it first to run it again",
            )
        self.state.set_pipeline(pipeline_id, Phase.PENDING)
        for stage in view.stages:
            if stage.phase in (Phase.FAILED, Phase.CANCELLED):
                # Attempts keep counting so every attempt has its own task_id; the retry
                # budget starts again from here.
                self.state.update_stage(pipeline_id, stage.name, phase=Phase.PENDING,
                                        not_before=0.0, retry_base=stage.attempts)  # fmt: skip
        self._record(pipeline_id, "", "retry requested")

    def _record(self, pipeline_id: str, stage: str, message: str, level: str = "info",
                **extra: Any) -> None:  # fmt: skip
        self.state.record(pipeline_id, stage, message, level, **extra)
        self._logged(pipeline_id, stage, message, level)

    def _logged(self, pipeline_id: str, stage: str, message: str, level: str = "info") -> None:
        ids = {"pipeline_id": pipeline_id, "stage": stage}
        log.log(LEVELS.get(level, logging.INFO), "%s", message, extra=ids)

    def _record_event(self, pipeline_id: str, stage: str, event: Event, **extra: Any) -> None:
        if isinstance(event, Metrics) and stage == "train" and "tokens_per_s" in event.values:
            self.observer.training_throughput(pipeline_id, event.values["tokens_per_s"])
        kind, payload = event_to_record(event)
        self.state.add_event(pipeline_id, stage, kind, {**payload, **extra})
