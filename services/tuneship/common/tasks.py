"""Stage tasks on a worker: one thread per task, keyed by ``task_id``, never duplicated.

A worker runs at most ``capacity`` tasks at once; more are refused with ``Busy``.
Sending the same ``task_id`` again attaches to the running task (its events are
replayed from the start, then followed live) or to the finished one (replayed up to
its result). Cancelling sets a flag that the task's event sink checks: the next event
the stage emits raises ``Cancelled`` inside the stage, which unwinds it cleanly.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tuneship.common.errors import Busy, Cancelled, FailedPrecondition, TuneshipError
from tuneship.common.events import Event, Log
from tuneship.common.logs import LEVELS, task_context

log = logging.getLogger("tuneship.task")


class TaskState(enum.Enum):
    """Lifecycle of a task; moves only forward (see ``_MOVES``)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


_MOVES = {
    TaskState.RUNNING: {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED},
    TaskState.SUCCEEDED: set(),
    TaskState.FAILED: set(),
    TaskState.CANCELLED: set(),
}


@dataclass(frozen=True)
class Finished:
    """The terminal item of a task's stream: its result, or the error that ended it."""

    state: TaskState
    result: Any = None
    error: TuneshipError | None = None


StageWork = Callable[["TaskSink"], Any]


@dataclass
class Task:
    """One stage run. ``items`` is the append-only log of events then one ``Finished``."""

    task_id: str
    stage: str
    state: TaskState = TaskState.RUNNING
    items: list[Event | Finished] = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    """Finish the current step, keep the progress (a checkpoint) and end: the process
    is going away (SIGTERM on preemption); a retry elsewhere resumes."""
    changed: threading.Condition = field(default_factory=threading.Condition)
    log_ids: dict[str, Any] = field(default_factory=dict)
    """What its log lines say about it: ``stage``, ``task_id``, and the ``pipeline_id``
    and ``attempt`` the request named."""

    def move(self, target: TaskState) -> None:
        if target not in _MOVES[self.state]:
            raise FailedPrecondition(f"task {self.task_id}: illegal move {self.state} -> {target}")
        self.state = target

    def append(self, item: Event | Finished) -> None:
        with self.changed:
            self.items.append(item)
            self.changed.notify_all()

    def follow(
        self, idle_s: float = 5.0, alive: Callable[[], bool] = lambda: True
    ) -> Iterator[Any]:
        """Yield every item from the first until ``Finished``; ``None`` after ``idle_s``
        without news (a keepalive for the stream carrying it)."""
        index = 0
        while alive():
            with self.changed:
                if index >= len(self.items):
                    self.changed.wait(idle_s)
                batch = self.items[index:]
            if not batch:
                yield None
                continue
            for item in batch:
                yield item
                if isinstance(item, Finished):
                    return
            index += len(batch)


class TaskSink:
    """The ``EventSink`` handed to a stage: records events, enforces cancellation."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def emit(self, event: Event) -> None:
        self.task.append(event)
        if isinstance(event, Log):  # the worker's own log (kubectl logs) says it too
            log.log(LEVELS.get(event.level, logging.INFO), "%s", event.message,
                    extra=self.task.log_ids)  # fmt: skip
        self.check_cancelled()

    def stop_requested(self) -> bool:
        """True once the worker is going away: a stage that can keep its progress
        (training's checkpoint) saves it and ends with ``Unavailable``."""
        return self.task.stop_requested.is_set()

    def check_cancelled(self) -> None:
        """Raise ``Cancelled`` if the task was asked to stop."""
        if self.task.cancel_requested.is_set():
            raise Cancelled(f"task {self.task.task_id} was cancelled")


class TaskRegistry:
    """The tasks of one worker process."""

    def __init__(self, stage: str, capacity: int = 1, keep_finished: int = 256) -> None:
        self.stage = stage
        self.capacity = capacity
        self.keep_finished = keep_finished
        self._tasks: dict[str, Task] = {}
        self._lock = threading.Lock()
        self.peak_running = 0
        """The most tasks that ever ran at once here: observed concurrency."""

    def running(self) -> int:
        """How many tasks are running now."""
        with self._lock:
            return sum(t.state is TaskState.RUNNING for t in self._tasks.values())

    def start_or_attach(
        self, task_id: str, work: StageWork, log_ids: Mapping[str, Any] | None = None
    ) -> Task:
        """Return the task with this id, starting ``work`` for it if it is new.
        ``log_ids`` (``pipeline_id``, ``attempt``) go on every log line of its work."""
        if not task_id:
            raise FailedPrecondition("a stage request needs a task_id (the idempotency key)")
        with self._lock:
            existing = self._tasks.get(task_id)
            if existing is not None:
                return existing
            busy = sum(t.state is TaskState.RUNNING for t in self._tasks.values())
            if busy >= self.capacity:
                raise Busy(
                    f"{self.stage} worker is busy ({busy}/{self.capacity} tasks running)",
                    hint="the controller retries with backoff; add workers to run more at once",
                )
            ids = {**(log_ids or {}), "stage": self.stage, "task_id": task_id}
            task = Task(task_id, self.stage, log_ids=ids)
            self._tasks[task_id] = task
            self.peak_running = max(self.peak_running, busy + 1)
            self._forget_old()
        thread = threading.Thread(target=self._run, args=(task, work), name=f"task-{task_id}")
        thread.daemon = True
        thread.start()
        return task

    def cancel(self, task_id: str) -> bool:
        """Ask a running task to stop; False when unknown or already finished."""
        return self._signal(task_id, "cancel_requested")

    def request_stop(self, task_id: str) -> bool:
        """Ask a running task to save its progress and end (the process is stopping)."""
        return self._signal(task_id, "stop_requested")

    def _signal(self, task_id: str, flag: str) -> bool:
        """Set ``flag`` (an Event of the task) if the task is running."""
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None or task.state is not TaskState.RUNNING:
            return False
        getattr(task, flag).set()
        return True

    def get(self, task_id: str) -> Task | None:
        with self._lock:
            return self._tasks.get(task_id)

    def _run(self, task: Task, work: StageWork) -> None:
        with task_context(**task.log_ids):
            log.info("task started")
            self._run_logged(task, work)
            finished = task.items[-1]
            assert isinstance(finished, Finished)
            error = f": {finished.error.render()}" if finished.error else ""
            level = logging.INFO if finished.state is TaskState.SUCCEEDED else logging.WARNING
            log.log(level, "task %s%s", finished.state.value, error)

    def _run_logged(self, task: Task, work: StageWork) -> None:
        sink = TaskSink(task)
        try:
            result = work(sink)
        except Cancelled as exc:
            task.move(TaskState.CANCELLED)
            task.append(Finished(TaskState.CANCELLED, error=exc))
        except TuneshipError as exc:
            task.append(Log(task.stage, exc.render(), level="error"))
            task.move(TaskState.FAILED)
            task.append(Finished(TaskState.FAILED, error=exc))
        except Exception as exc:
            error = TuneshipError(f"internal error in {task.stage}: {type(exc).__name__}: {exc}")
            task.append(Log(task.stage, error.render(), level="error"))
            task.move(TaskState.FAILED)
            task.append(Finished(TaskState.FAILED, error=error))
        else:
            task.move(TaskState.SUCCEEDED)
            task.append(Finished(TaskState.SUCCEEDED, result=result))

    def _forget_old(self) -> None:
        finished = [k for k, t in self._tasks.items() if t.state is not TaskState.RUNNING]
        for key in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._tasks[key]
