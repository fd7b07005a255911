"""Durable pipeline state in SQLAlchemy (SQLite by default, PostgreSQL in a cluster).

Every change is one short transaction, so a controller killed at any point restarts
from a consistent picture: pipelines, their stages (with the task_id of the attempt
in flight, written *before* the worker is called) and the event log that Watch replays.
A scheduler step (a stage started, a stage succeeded) is one transaction with the
events it records, so a reader never sees the step without its events or the reverse.
The tables are in ``tables.py`` (the newest schema revision). Every call rides out a
database restart for a while (``database.py``).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from tuneship.common.errors import NotFound, Unavailable
from tuneship.common.stages import STAGES
from tuneship.controller.database import (
    Reconnect,
    commit_lost,
    is_transient,
    open_engine,
    retrying,
    shown,
)
from tuneship.controller.machine import Phase, check_move
from tuneship.controller.schema import migrate
from tuneship.controller.tables import (
    ALL_NEXT_STAGES,
    STARTABLE_NEXT_STAGES,
    Base,
    EventRow,
    EventView,
    NextStage,
    PipelineRow,
    PipelineView,
    StageRow,
    StageView,
    add_pipeline,
    append,
    change_stage,
    has_labels,
    move_pipeline,
    move_pipeline_from,
    move_stage,
    pipeline_view,
    pipeline_views,
    stage_of,
    stage_view,
    transition,
)

__all__ = ["Base", "EventView", "NextStage", "PipelineView", "StageView", "StateStore"]

T = TypeVar("T")


class StateStore:
    """All reads and writes of controller state. Thread-safe; one transaction per call.

    Opening it migrates the database to this code's schema (``FailedPrecondition`` if
    the database is newer). A call that finds the database down tries again for up to
    ``reconnect.give_up_after_s``, then raises ``StateUnavailable``.
    """

    def __init__(self, url: str, reconnect: Reconnect | None = None) -> None:
        self.engine = open_engine(url)
        self.url = shown(self.engine)
        self.reconnect = reconnect or Reconnect()
        try:
            self.revision = migrate(self.engine, self.url)
        except DBAPIError as exc:
            self.engine.dispose()
            raise Unavailable(
                f"cannot open the state database: {exc.orig}",
                where=self.url,
                hint="check TUNESHIP_STATE_URL (a SQLite file's directory must exist and be "
                "writable; a PostgreSQL server must be up and the database exist)",
            ) from exc
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite allows one writer; keep it orderly. Correctness does not rest on it:
        # PostgreSQL serializes the event sequence on the pipeline's row (add_event).
        self._write_lock = threading.RLock()
        self.changed = threading.Condition()
        self._generation = 0

    def close(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()

    def _write(self, change: Callable[[Session], T]) -> T:
        """Run ``change`` in one transaction, again if the database was down before the
        commit; a connection lost during the commit is ``StateUnavailable`` (the change
        may have been applied: the caller's next look at the state tells)."""

        def attempt() -> T:
            with self._write_lock, self._sessions() as session:
                result = change(session)
                session.flush()  # failures up to here roll back and are safe to try again
                try:
                    session.commit()
                except DBAPIError as error:
                    if is_transient(error):
                        raise commit_lost(error, self.url) from error
                    raise
                return result

        result = retrying(attempt, self.reconnect, self.url)
        with self.changed:
            self._generation += 1
            self.changed.notify_all()
        return result

    def _read(self, query: Callable[[Session], T]) -> T:
        def attempt() -> T:
            with self._sessions() as session:
                return query(session)

        return retrying(attempt, self.reconnect, self.url)

    def create(
        self,
        name: str,
        spec_json: str,
        priority: int,
        labels: dict[str, str],
        inputs: dict[str, dict[str, Any]],
    ) -> str:
        """Insert a pending pipeline with pending stages; returns its id."""
        pipeline_id = f"{name}-{secrets.token_hex(3)}"
        now = time.time()

        def add(s: Session) -> None:
            row = {"id": pipeline_id, "name": name, "phase": Phase.PENDING.value,
                   "spec_json": spec_json, "priority": priority,
                   "labels_json": json.dumps(labels), "created": now, "updated": now,
                   "inputs_json": json.dumps(inputs, sort_keys=True), "error": "",
                   "last_seq": 0}  # fmt: skip
            add_pipeline(s, row, list(STAGES))

        self._write(add)
        return pipeline_id

    def get(self, pipeline_id: str) -> PipelineView:
        return self._read(lambda s: pipeline_view(s, pipeline_id))

    def list_pipelines(
        self,
        phase: Phase | None = None,
        name_prefix: str = "",
        labels: dict[str, str] | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[PipelineView], bool]:
        """A page of pipelines, newest first; the bool says whether more follow.

        Paged in SQL; only the page's pipelines are read whole (two queries). Labels
        are JSON in a column: a ``LIKE`` on it narrows the rows, then the decoded
        labels of those (no specs, no stages) decide."""
        query = select(PipelineRow.id, PipelineRow.labels_json).order_by(
            PipelineRow.created.desc(), PipelineRow.id
        )
        if phase is not None:
            query = query.where(PipelineRow.phase == phase.value)
        if name_prefix:
            query = query.where(PipelineRow.name.startswith(name_prefix, autoescape=True))
        for key, value in (labels or {}).items():
            # json.dumps wrote the column, so a matching label appears as this text in it.
            fragment = json.dumps({key: value})[1:-1]
            query = query.where(PipelineRow.labels_json.contains(fragment, autoescape=True))
        if not labels:
            query = query.offset(offset).limit(limit + 1)

        def read(s: Session) -> tuple[list[PipelineView], bool]:
            rows = s.execute(query).all()
            if labels:
                ids = [i for i, text in rows if has_labels(json.loads(text), labels)]
                ids = ids[offset:]
            else:
                ids = [i for i, _ in rows]
            return pipeline_views(s, ids[:limit]), len(ids) > limit

        return self._read(read)

    def next_stages(self, per_stage: int | None = None) -> list[NextStage]:
        """For every pending or running pipeline, highest priority then oldest first, its
        first stage that has not succeeded (one query, whatever the number of pipelines).

        ``per_stage``: only stages that may start now (pending, out of their backoff),
        at most that many per stage, and every running one; the scheduler asks for no
        more than it can start, so a long queue costs it nothing per tick."""
        if per_stage is None:
            query, params = ALL_NEXT_STAGES, {}
        else:
            query = STARTABLE_NEXT_STAGES
            params = {"now": time.time(), "per_stage": per_stage}

        def read(s: Session) -> list[NextStage]:
            return [
                NextStage(pid, name, Phase(phase), task_id, attempts, not_before)
                for pid, name, phase, task_id, attempts, not_before in s.execute(query, params)
            ]

        return self._read(read)

    def ids_in_phase(self, *phases: Phase) -> list[str]:
        query = (
            select(PipelineRow.id)
            .where(PipelineRow.phase.in_([p.value for p in phases]))
            .order_by(PipelineRow.priority.desc(), PipelineRow.created)
        )
        return self._read(lambda s: list(s.scalars(query)))

    def set_pipeline(self, pipeline_id: str, phase: Phase, error: str = "") -> None:
        self._write(lambda s: move_pipeline(s, pipeline_id, phase, error))

    def update_stage(self, pipeline_id: str, stage: str, **fields: Any) -> StageView:
        """Change a stage; a ``phase`` change is checked against the state machine."""
        return self._write(lambda s: stage_view(change_stage(s, pipeline_id, stage, fields)))

    def start_stage(
        self, pipeline_id: str, stage: str, task_id: str, attempts: int, message: str
    ) -> PipelineView:
        """Start attempt ``attempts`` of a pending ``stage`` under ``task_id``: the stage
        and (if pending) the pipeline become running and ``message`` is recorded, in one
        transaction. Returns the pipeline as it is then. ``FailedPrecondition`` if the
        stage cannot start (the pipeline was cancelled meanwhile)."""

        def change(s: Session) -> PipelineView:
            move_stage(
                s, pipeline_id, stage, Phase.PENDING, Phase.RUNNING, task_id=task_id,
                attempts=attempts, started=time.time(), error="", error_code="",
            )  # fmt: skip
            move_pipeline_from(s, pipeline_id, Phase.PENDING, Phase.RUNNING)
            transition(s, pipeline_id, stage, message, "info", {})
            view = pipeline_view(s, pipeline_id)
            if view.phase is not Phase.RUNNING:  # cancelled meanwhile: refused, rolled back
                check_move(f"pipeline {pipeline_id}", view.phase, Phase.RUNNING)
            return view

        return self._write(change)

    def finish_stage(
        self,
        pipeline_id: str,
        stage: str,
        outputs: dict[str, Any],
        summary: dict[str, Any],
        message: str,
        pipeline_message: str = "",
    ) -> StageView:
        """Record ``message`` (with the summary), then mark ``stage`` succeeded with its
        outputs; with ``pipeline_message`` (the last stage) the pipeline succeeds too and
        that is recorded after. One transaction; returns the stage."""

        def change(s: Session) -> StageView:
            transition(s, pipeline_id, stage, message, "info", {"summary": summary})
            finished = time.time()
            move_stage(
                s, pipeline_id, stage, Phase.RUNNING, Phase.SUCCEEDED, finished=finished,
                outputs_json=json.dumps(outputs, sort_keys=True),
                summary_json=json.dumps(summary, sort_keys=True),
            )  # fmt: skip
            if pipeline_message:
                if not move_pipeline_from(s, pipeline_id, Phase.RUNNING, Phase.SUCCEEDED):
                    move_pipeline(s, pipeline_id, Phase.SUCCEEDED)  # checked: refused or same
                transition(s, pipeline_id, "", pipeline_message, "info", {})
            return stage_of(s, pipeline_id, stage)

        return self._write(change)

    def record(
        self, pipeline_id: str, stage: str, message: str, level: str = "info", **extra: Any
    ) -> int:
        """Append a transition event carrying the pipeline's phase; returns its number."""
        return self._write(lambda s: transition(s, pipeline_id, stage, message, level, extra))

    def delete(self, pipeline_id: str) -> None:
        def change(s: Session) -> None:
            if s.get(PipelineRow, pipeline_id) is None:
                raise NotFound(f"no pipeline {pipeline_id!r}")
            for model in (EventRow, StageRow):
                s.execute(delete(model).where(model.pipeline_id == pipeline_id))
            s.execute(delete(PipelineRow).where(PipelineRow.id == pipeline_id))

        self._write(change)

    def add_event(self, pipeline_id: str, stage: str, kind: str, payload: dict[str, Any]) -> int:
        """Append to a pipeline's event log; returns the event's sequence number.

        The number comes from one ``UPDATE ... RETURNING`` on the pipeline's row, which
        the database serializes: writers in other threads or processes never get the
        same one.
        """

        return self._write(lambda s: append(s, pipeline_id, stage, kind, payload))

    def last_task_seq(self, pipeline_id: str, task_id: str) -> int:
        """The highest worker sequence number recorded for ``task_id`` (0: none)."""
        query = select(func.max(EventRow.task_seq)).where(
            EventRow.pipeline_id == pipeline_id, EventRow.task_id == task_id
        )
        return self._read(lambda s: int(s.scalar(query) or 0))

    def events(self, pipeline_id: str, after_seq: int = 0, limit: int = 1000) -> list[EventView]:
        query = (
            select(EventRow)
            .where(EventRow.pipeline_id == pipeline_id, EventRow.seq > after_seq)
            .order_by(EventRow.seq)
            .limit(limit)
        )

        def read(s: Session) -> list[EventView]:
            return [
                EventView(r.pipeline_id, r.seq, r.time, r.stage, r.kind, json.loads(r.payload_json))
                for r in s.scalars(query)
            ]

        return self._read(read)

    @property
    def generation(self) -> int:
        """How many writes this store has made: pass it to :meth:`wait_for_change`."""
        return self._generation

    def wait_for_change(self, timeout_s: float, seen: int | None = None) -> None:
        """Block until a write (or the timeout); with ``seen`` (a :attr:`generation`),
        return at once if a write came after it, so none made meanwhile is missed."""
        with self.changed:
            if seen is None or seen == self._generation:
                self.changed.wait(timeout_s)
