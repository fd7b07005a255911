"""Durable pipeline state in SQLAlchemy (SQLite by default, PostgreSQL in a cluster).

Every change is one short transaction, so a controller killed at any point restarts
from a consistent picture: pipelines, their stages (with the task_id of the attempt
in flight, written *before* the worker is called) and the event log that Watch replays.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from tuneship.common.errors import NotFound, Unavailable
from tuneship.common.stages import STAGES
from tuneship.controller.machine import Phase, check_move


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

    pipeline_id: Mapped[str] = mapped_column(ForeignKey("pipelines.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[float] = mapped_column(Float)
    stage: Mapped[str] = mapped_column(String(16), default="")
    kind: Mapped[str] = mapped_column(String(16))
    payload_json: Mapped[str] = mapped_column(Text)


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
    """All reads and writes of controller state. Thread-safe; one transaction per call."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, future=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            Base.metadata.create_all(self.engine)
        except OperationalError as exc:
            raise Unavailable(
                f"cannot open the state database: {exc.orig}",
                where=self.engine.url.render_as_string(hide_password=True),
                hint="check TUNESHIP_STATE_URL (its directory must exist and be writable)",
            ) from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.RLock()  # SQLite allows one writer; keep it orderly
        self.changed = threading.Condition()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._write_lock, self._sessions.begin() as session:
            yield session
        with self.changed:
            self.changed.notify_all()

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
        with self._tx() as s:
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
        self.add_event(pipeline_id, "", "transition", {"message": "submitted", "phase": "pending"})
        return pipeline_id

    def get(self, pipeline_id: str) -> PipelineView:
        with self._sessions() as s:
            row = s.get(PipelineRow, pipeline_id)
            if row is None:
                raise NotFound(f"no pipeline {pipeline_id!r}", hint="`tuneship list` shows ids")
            stages = s.scalars(
                select(StageRow)
                .where(StageRow.pipeline_id == pipeline_id)
                .order_by(StageRow.position)
            ).all()
            return PipelineView(
                row.id, row.name, Phase(row.phase), row.spec_json, row.priority,
                json.loads(row.labels_json), row.created, row.updated, row.error,
                tuple(_stage_view(st) for st in stages), json.loads(row.inputs_json),
            )  # fmt: skip

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
        with self._sessions() as s:
            ids = list(s.scalars(query).all())
        views = [self.get(i) for i in ids]
        if labels:
            views = [v for v in views if all(v.labels.get(k) == x for k, x in labels.items())]
        page = views[offset : offset + limit]
        return page, len(views) > offset + limit

    def ids_in_phase(self, *phases: Phase) -> list[str]:
        with self._sessions() as s:
            query = select(PipelineRow.id).where(PipelineRow.phase.in_([p.value for p in phases]))
            return list(s.scalars(query.order_by(PipelineRow.priority.desc(), PipelineRow.created)))

    def set_pipeline(self, pipeline_id: str, phase: Phase, error: str = "") -> None:
        with self._tx() as s:
            row = s.get(PipelineRow, pipeline_id)
            if row is None:
                raise NotFound(f"no pipeline {pipeline_id!r}")
            if Phase(row.phase) is not phase:
                row.phase = check_move(f"pipeline {pipeline_id}", Phase(row.phase), phase).value
            row.error, row.updated = error, time.time()

    def update_stage(self, pipeline_id: str, stage: str, **fields: Any) -> StageView:
        """Change a stage; a ``phase`` change is checked against the state machine."""
        with self._tx() as s:
            row = s.get(StageRow, (pipeline_id, stage))
            if row is None:
                raise NotFound(f"no stage {stage!r} in pipeline {pipeline_id!r}")
            if "phase" in fields:
                target = fields.pop("phase")
                row.phase = check_move(
                    f"stage {pipeline_id}/{stage}", Phase(row.phase), target
                ).value
            for key in ("outputs", "summary"):
                if key in fields:
                    setattr(row, f"{key}_json", json.dumps(fields.pop(key), sort_keys=True))
            for key, value in fields.items():
                setattr(row, key, value)
            return _stage_view(row)

    def delete(self, pipeline_id: str) -> None:
        with self._tx() as s:
            pipeline = s.get(PipelineRow, pipeline_id)
            if pipeline is None:
                raise NotFound(f"no pipeline {pipeline_id!r}")
            for model in (EventRow, StageRow):
                for child in s.scalars(select(model).where(model.pipeline_id == pipeline_id)):
                    s.delete(child)
            s.delete(pipeline)

    def add_event(self, pipeline_id: str, stage: str, kind: str, payload: dict[str, Any]) -> int:
        """Append to a pipeline's event log; returns the event's sequence number."""
        with self._tx() as s:
            row = s.get(PipelineRow, pipeline_id)
            if row is None:
                raise NotFound(f"no pipeline {pipeline_id!r}")
            row.last_seq += 1
            s.add(EventRow(pipeline_id=pipeline_id, seq=row.last_seq, time=time.time(),
                           stage=stage, kind=kind, payload_json=json.dumps(payload)))  # fmt: skip
            return row.last_seq

    def last_task_seq(self, pipeline_id: str, task_id: str) -> int:
        """The highest worker sequence number recorded for ``task_id`` (0: none)."""
        last, after = 0, 0
        while True:
            page = self.events(pipeline_id, after_seq=after, limit=1000)
            if not page:
                return last
            for recorded in page:
                if recorded.payload.get("task") == task_id:
                    last = max(last, int(recorded.payload.get("task_seq", 0)))
            after = page[-1].seq

    def events(self, pipeline_id: str, after_seq: int = 0, limit: int = 1000) -> list[EventView]:
        with self._sessions() as s:
            rows = s.scalars(
                select(EventRow)
                .where(EventRow.pipeline_id == pipeline_id, EventRow.seq > after_seq)
                .order_by(EventRow.seq)
                .limit(limit)
            ).all()
            return [
                EventView(r.pipeline_id, r.seq, r.time, r.stage, r.kind, json.loads(r.payload_json))
                for r in rows
            ]

    def wait_for_change(self, timeout_s: float) -> None:
        """Block until any write (or the timeout)."""
        with self.changed:
            self.changed.wait(timeout_s)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
