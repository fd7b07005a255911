"""Durable pipeline state in SQLAlchemy (SQLite by default, PostgreSQL in a cluster).

Every change is one short transaction, so a controller killed at any point restarts
from a consistent picture: pipelines, their stages (with the task_id of the attempt
in flight, written *before* the worker is called) and the event log that Watch replays.
The tables below are the newest schema revision (``schema.py`` migrates a database to
it on start; a change here needs a new revision in ``migrations/versions``). Every call
rides out a database restart for a while (``database.py``).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

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

T = TypeVar("T")


class Base(DeclarativeBase):
    pass


class PipelineRow(Base):
    __tablename__ = "pipelines"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    phase: Mapped[str] = mapped_column(String(16), index=True)
    spec_json: Mapped[str] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    labels_json: Mapped[str] = mapped_column(Text, default="{}")
    inputs_json: Mapped[str] = mapped_column(Text, default="{}")
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)
    error: Mapped[str] = mapped_column(Text, default="")
    last_seq: Mapped[int] = mapped_column(Integer, default=0)


class StageRow(Base):
    __tablename__ = "stages"

    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16), index=True)
    task_id: Mapped[str] = mapped_column(String(120), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retry_base: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    error_code: Mapped[str] = mapped_column(String(32), default="")
    started: Mapped[float] = mapped_column(Float, default=0.0)
    finished: Mapped[float] = mapped_column(Float, default=0.0)
    not_before: Mapped[float] = mapped_column(Float, default=0.0)
    outputs_json: Mapped[str] = mapped_column(Text, default="{}")
    summary_json: Mapped[str] = mapped_column(Text, default="{}")


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_task", "pipeline_id", "task_id", "task_seq"),)

    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[float] = mapped_column(Float)
    stage: Mapped[str] = mapped_column(String(16), default="")
    kind: Mapped[str] = mapped_column(String(16))
    payload_json: Mapped[str] = mapped_column(Text)
    # The worker task an event came from and its number there (payload "task"/"task_seq").
    task_id: Mapped[str] = mapped_column(String(120), default="", server_default="")
    task_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


@dataclass(frozen=True)
class StageView:
    """A stage as read from the store."""

    name: str
    phase: Phase
    task_id: str
    attempts: int
    retry_base: int
    error: str
    error_code: str
    started: float
    finished: float
    not_before: float
    outputs: dict[str, Any]
    summary: dict[str, Any]


@dataclass(frozen=True)
class PipelineView:
    """A pipeline with its stages, as read from the store."""

    id: str
    name: str
    phase: Phase
    spec_json: str
    priority: int
    labels: dict[str, str]
    created: float
    updated: float
    error: str
    stages: tuple[StageView, ...]
    inputs: dict[str, dict[str, Any]]

    def stage(self, name: str) -> StageView:
        return next(s for s in self.stages if s.name == name)


@dataclass(frozen=True)
class EventView:
    pipeline_id: str
    seq: int
    time: float
    stage: str
    kind: str
    payload: dict[str, Any]


def _stage_view(row: StageRow) -> StageView:
    return StageView(
        row.name, Phase(row.phase), row.task_id, row.attempts, row.retry_base, row.error,
        row.error_code,
        row.started, row.finished, row.not_before,
        json.loads(row.outputs_json), json.loads(row.summary_json),
    )  # fmt: skip


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

        def insert(s: Session) -> None:
            s.add(
                PipelineRow(
                    id=pipeline_id, name=name, phase=Phase.PENDING.value, spec_json=spec_json,
                    priority=priority, labels_json=json.dumps(labels), created=now, updated=now,
                    inputs_json=json.dumps(inputs, sort_keys=True),
                )
            )  # fmt: skip
            for position, stage in enumerate(STAGES):
                s.add(StageRow(pipeline_id=pipeline_id, name=stage, position=position,
                               phase=Phase.PENDING.value))  # fmt: skip

        self._write(insert)
        self.add_event(pipeline_id, "", "transition", {"message": "submitted", "phase": "pending"})
        return pipeline_id

    def get(self, pipeline_id: str) -> PipelineView:
        return self._read(lambda s: _pipeline_view(s, pipeline_id))

    def list_pipelines(
        self,
        phase: Phase | None = None,
        name_prefix: str = "",
        labels: dict[str, str] | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[PipelineView], bool]:
        """A page of pipelines, newest first; the bool says whether more follow."""
        query = select(PipelineRow.id).order_by(PipelineRow.created.desc(), PipelineRow.id)
        if phase is not None:
            query = query.where(PipelineRow.phase == phase.value)
        if name_prefix:
            query = query.where(PipelineRow.name.startswith(name_prefix))
        ids = self._read(lambda s: list(s.scalars(query).all()))
        views = [self.get(i) for i in ids]
        if labels:
            views = [v for v in views if all(v.labels.get(k) == x for k, x in labels.items())]
        page = views[offset : offset + limit]
        return page, len(views) > offset + limit

    def ids_in_phase(self, *phases: Phase) -> list[str]:
        query = (
            select(PipelineRow.id)
            .where(PipelineRow.phase.in_([p.value for p in phases]))
            .order_by(PipelineRow.priority.desc(), PipelineRow.created)
        )
        return self._read(lambda s: list(s.scalars(query)))

    def set_pipeline(self, pipeline_id: str, phase: Phase, error: str = "") -> None:
        def change(s: Session) -> None:
            row = s.get(PipelineRow, pipeline_id)
            if row is None:
                raise NotFound(f"no pipeline {pipeline_id!r}")
            if Phase(row.phase) is not phase:
                row.phase = check_move(f"pipeline {pipeline_id}", Phase(row.phase), phase).value
            row.error, row.updated = error, time.time()

        self._write(change)

    def update_stage(self, pipeline_id: str, stage: str, **fields: Any) -> StageView:
        """Change a stage; a ``phase`` change is checked against the state machine."""

        def change(s: Session) -> StageView:
            row = s.get(StageRow, (pipeline_id, stage))
            if row is None:
                raise NotFound(f"no stage {stage!r} in pipeline {pipeline_id!r}")
            values = dict(fields)
            if "phase" in values:
                target = values.pop("phase")
                row.phase = check_move(
                    f"stage {pipeline_id}/{stage}", Phase(row.phase), target
                ).value
            for key in ("outputs", "summary"):
                if key in values:
                    setattr(row, f"{key}_json", json.dumps(values.pop(key), sort_keys=True))
            for key, value in values.items():
                setattr(row, key, value)
            return _stage_view(row)

        return self._write(change)

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

        def change(s: Session) -> int:
            seq = s.execute(
                update(PipelineRow)
                .where(PipelineRow.id == pipeline_id)
                .values(last_seq=PipelineRow.last_seq + 1)
                .returning(PipelineRow.last_seq)
            ).scalar()
            if seq is None:
                raise NotFound(f"no pipeline {pipeline_id!r}")
            s.add(EventRow(pipeline_id=pipeline_id, seq=seq, time=time.time(), stage=stage,
                           kind=kind, payload_json=json.dumps(payload),
                           task_id=str(payload.get("task", "")),
                           task_seq=int(payload.get("task_seq", 0))))  # fmt: skip
            return seq

        return self._write(change)

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

    def wait_for_change(self, timeout_s: float) -> None:
        """Block until any write (or the timeout)."""
        with self.changed:
            self.changed.wait(timeout_s)


def _pipeline_view(s: Session, pipeline_id: str) -> PipelineView:
    row = s.get(PipelineRow, pipeline_id)
    if row is None:
        raise NotFound(f"no pipeline {pipeline_id!r}", hint="`tuneship list` shows ids")
    stages = s.scalars(
        select(StageRow).where(StageRow.pipeline_id == pipeline_id).order_by(StageRow.position)
    ).all()
    return PipelineView(
        row.id, row.name, Phase(row.phase), row.spec_json, row.priority,
        json.loads(row.labels_json), row.created, row.updated, row.error,
        tuple(_stage_view(st) for st in stages), json.loads(row.inputs_json),
    )  # fmt: skip
