"""Several serving replicas, each serving every published model.

A publish that passed its smoke test writes a *served-model record* to the artifact
store, one key per model name (``served_models``): the version ``name:latest`` points
at, the GGUF's store key and sha256, and the ``serve`` section it was published with.
Deleting the model replaces the record with a tombstone. Each replica reconciles
its own backend with the records: once before it reports SERVING, every ``sync_s``
seconds after, and for one model when a chat asks for a model its backend lacks.

Re-publishing downloads the GGUF (sha256-verified) and goes through ``publish_model``
with the recorded ``serve`` section and version, without smoke prompts: the same bytes
passed them on the replica that published, and asking them again on every replica at
start would load every model into memory before the replica could become Ready.

The store offers atomic puts but no compare-and-swap: a record is a whole document and
the last put wins (the newest revision). A replica applies a record whenever its
revision differs from the one it applied, so every replica converges on whatever the
store holds.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from tuneship.common.errors import InvalidInput, NotFound, TuneshipError
from tuneship.common.events import Event, Log
from tuneship.common.spec import ServeSpec
from tuneship.common.stagework import StageContext
from tuneship.common.store import ArtifactStore
from tuneship.serving.backend import ServingBackend, full_name
from tuneship.serving.publish import PublishResult, publish_model
from tuneship.serving.served_models import GgufSource, ServedModelRecord, ServedModels

log = logging.getLogger("tuneship.serving.replicas")

DEFAULT_SYNC_S = 30.0
"""How often a replica looks for models published or deleted on other replicas."""


class Outcome(StrEnum):
    """What one sync did for one model name."""

    PUBLISHED = "published"
    RETAGGED = "retagged"
    REMOVED = "removed"
    UNCHANGED = "unchanged"
    BUSY = "busy"
    """A publish of that name was running on this replica; looked at next time."""
    FAILED = "failed"


@dataclass
class SyncReport:
    """One sync: the outcome per model name, and why the failed ones failed."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


class _LogSink:
    """Publish events of a re-publish go to the process log."""

    def emit(self, event: Event) -> None:
        if isinstance(event, Log):
            level = {"warning": logging.WARNING, "error": logging.ERROR}.get(event.level)
            log.log(level or logging.INFO, "%s", event.message)


class ReplicaSync:
    """Keeps one replica's backend in step with the served-model records.

    Thread-safe: the periodic sync, chats and publishes may run at once. Work on one
    model name is serialized by a lock per name.
    """

    def __init__(
        self,
        store: ArtifactStore,
        backend: ServingBackend,
        work_dir: Path,
        *,
        replica: str | None = None,
        clock: Any = time.time_ns,
    ) -> None:
        self.records = ServedModels(store, clock)
        self.store = store
        self.backend = backend
        self.work_dir = work_dir
        self.replica = replica or socket.gethostname()
        self._applied: dict[str, tuple[int, str]] = {}
        self._failed: dict[str, tuple[int | None, TuneshipError]] = {}
        self._present: set[str] = set()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- this replica publishes or deletes -------------------------------------------

    @contextmanager
    def publishing(self, name: str) -> Iterator[None]:
        """Hold ``name`` while it is published here, so no sync of it interleaves."""
        with self._lock_of(name):
            yield

    def record_published(
        self, result: PublishResult, serve: ServeSpec, gguf: GgufSource,
        origin: Mapping[str, str] | None = None,
    ) -> ServedModelRecord:  # fmt: skip
        """Record a publish that passed its smoke test, so every replica serves it."""
        published = {"backend": result.backend, "backend_version": result.backend_version,
                      "template_mode": result.template_mode, "stop": result.stop,
                      "parameters": result.parameters}  # fmt: skip
        record = ServedModelRecord(
            name=result.name, version=result.version, gguf=gguf, serve=serve,
            published=published, origin={**(origin or {}), "replica": self.replica},
        )  # fmt: skip
        stored = self.records.write(record)
        self._applied_now(stored, {result.model, full_name(result.name, "latest")})
        log.info("recorded %s (revision %d) for every replica", result.model, stored.revision)
        return stored

    def delete(self, model: str) -> None:
        """Delete ``model`` here; for the recorded model (``name``, ``name:latest`` or
        ``name:<recorded version>``) also everywhere, through a tombstone.

        Other tags are local to the replica that has them. NotFound when neither this
        backend nor the records know the model.
        """
        name, tag = full_name(model).split(":", 1)
        with self._lock_of(name):
            try:
                record = self.records.read(name)
                version = record.version if record and not record.deleted else None
            except InvalidInput:  # an unreadable record: deleting the model replaces it
                version = tag
            if version is None or tag not in (version, "latest"):
                self.backend.delete(model)
                self._forget_present({full_name(model)})
                return
            # The tombstone first: were the local delete first and the write to fail,
            # the next sync would publish the model here again.
            tombstone = ServedModelRecord(
                name, version, deleted=True, origin={"replica": self.replica}
            )
            tomb = self.records.write(tombstone)
            self._remove_tags(tomb)
            self._applied_now(tomb, set())
            log.info("deleted %s on every replica (revision %d)", name, tomb.revision)

    # -- this replica follows the records --------------------------------------------

    def sync_once(self, *, strict: bool = False) -> SyncReport:
        """Reconcile the backend with every record. A record that cannot be applied is
        logged and skipped; ``strict`` raises when the records or the backend's models
        cannot be listed at all (the store or the backend is down)."""
        start = time.monotonic()
        report = SyncReport()
        try:
            names = self.records.names()
            self._refresh_present()
        except Exception as exc:
            if strict:
                raise
            log.warning("replica sync skipped: %s", _describe(exc))
            return report
        for name in names:
            try:
                outcome = self._sync_name(name, wait=False)
            except Exception as exc:
                outcome = Outcome.FAILED
                report.problems[name] = _describe(exc)
                if not isinstance(exc, TuneshipError):  # those are logged once, when noted
                    log.warning("skipping served model %s", name, exc_info=exc)
            report.outcomes[name] = outcome
        report.seconds = time.monotonic() - start
        changed = {n: o.value for n, o in report.outcomes.items() if o is not Outcome.UNCHANGED}
        if changed:
            log.info("replica sync in %.1f s: %s", report.seconds, changed)
        return report

    def sync_model(self, name: str) -> Outcome:
        """Reconcile one model name now (waiting for a publish of it); raises its error."""
        return self._sync_name(name, wait=True)

    def ensure(self, model: str) -> None:
        """Before a chat: when the backend lacks ``model``, sync its record first, so a
        request routed to a replica that has not synced yet still finds the model.

        Retryable errors (store or backend down) propagate; any other reason the model
        cannot be re-published here becomes NotFound naming it.
        """
        wanted = full_name(model)
        with self._guard:
            if wanted in self._present:
                return
        if wanted in self._refresh_present():
            return
        try:
            self.sync_model(wanted.split(":", 1)[0])
        except TuneshipError as exc:
            if exc.retryable:
                raise
            raise NotFound(
                f"{wanted} is recorded but could not be re-published on this replica: "
                f"{exc.message}", where=exc.where, hint=exc.hint,
            ) from exc  # fmt: skip

    def start(self, interval_s: float) -> ReplicaSync:
        """Sync every ``interval_s`` seconds in a daemon thread until ``stop()``."""
        self._thread = threading.Thread(
            target=self._loop, args=(interval_s,), name="replica-sync", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.sync_once()
            except Exception:  # never let the thread die: the next round tries again
                log.exception("replica sync failed; trying again in %.0f s", interval_s)

    # -- reconciling one name ---------------------------------------------------------

    def _sync_name(self, name: str, *, wait: bool) -> Outcome:
        lock = self._lock_of(name)
        if not lock.acquire(blocking=wait):
            return Outcome.BUSY
        try:
            return self._sync_locked(name)
        finally:
            lock.release()

    def _sync_locked(self, name: str) -> Outcome:
        record: ServedModelRecord | None = None
        try:
            record = self.records.read(name)
            if record is None:
                return Outcome.UNCHANGED
            failed = self._failed.get(name)
            if failed is not None and failed[0] == record.revision:
                raise failed[1]  # a permanent failure of this very revision: not again
            outcome = self._apply(record)
        except TuneshipError as exc:
            self._note_failure(name, record, exc)
            raise
        self._failed.pop(name, None)
        return outcome

    def _apply(self, record: ServedModelRecord) -> Outcome:
        """Make the backend match ``record``; judged on what the backend lists now and on
        what this process applied before (after a restart: the backend alone)."""
        applied = self._applied.get(record.name)
        if record.deleted:
            if applied == (record.revision, record.fingerprint):
                return Outcome.UNCHANGED
            removed = self._remove_tags(record, {m.name for m in self.backend.list()})
            self._applied_now(record, set())
            return Outcome.REMOVED if removed else Outcome.UNCHANGED
        version = full_name(record.name, record.version)
        latest = full_name(record.name, "latest")
        digests = {m.name: m.digest for m in self.backend.list()}
        content_changed = applied is not None and applied[1] != record.fingerprint
        revision_changed = applied is not None and applied[0] != record.revision
        if version not in digests or content_changed:
            self._republish(record)  # publish_model moves latest too
            outcome = Outcome.PUBLISHED
        elif digests.get(latest) != digests[version] or revision_changed:
            self.backend.copy(version, latest)
            outcome = Outcome.RETAGGED
        else:
            outcome = Outcome.UNCHANGED
        self._applied_now(record, {version, latest})
        return outcome

    def _republish(self, record: ServedModelRecord) -> PublishResult:
        """Download the record's GGUF and publish it as recorded, without smoke prompts."""
        assert record.gguf is not None and record.serve is not None
        folder = self.work_dir / "replicas" / record.gguf.sha256[:16]
        gguf = folder / record.gguf.file_name
        try:
            self.store.get_file(record.gguf.key, gguf, sha256=record.gguf.sha256)
            serve = record.serve.model_copy(update={"smoke_prompts": []})
            result = publish_model(
                serve, record.name, gguf, self.backend, _LogSink(), version=record.version
            )
        finally:
            gguf.unlink(missing_ok=True)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        recorded = {k: record.published.get(k) for k in ("template_mode", "parameters")}
        if recorded["template_mode"] and recorded != {
            "template_mode": result.template_mode,
            "parameters": result.parameters,
        }:
            log.warning(
                "%s re-published with %s %s, the publishing replica had %s (another %s "
                "version?)", result.model, result.template_mode, result.parameters,
                recorded, self.backend.kind,
            )  # fmt: skip
        log.info("re-published %s from %s", result.model, record.gguf.key)
        return result

    def _remove_tags(self, record: ServedModelRecord, present: set[str] | None = None) -> list[str]:
        """Delete the record's version and ``latest`` (those in ``present``, when given)."""
        removed = []
        for model in (full_name(record.name, record.version), full_name(record.name, "latest")):
            if present is not None and model not in present:
                continue
            try:
                self.backend.delete(model)
                removed.append(model)
            except NotFound:
                pass
        self._forget_present(set(removed))
        return removed

    # -- bookkeeping ------------------------------------------------------------------

    def _lock_of(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def _refresh_present(self) -> set[str]:
        present = {m.name for m in self.backend.list()}
        with self._guard:
            self._present = set(present)
        return present

    def _applied_now(self, record: ServedModelRecord, models: set[str]) -> None:
        with self._guard:
            self._applied[record.name] = (record.revision, record.fingerprint)
            self._present |= models

    def _forget_present(self, models: set[str]) -> None:
        with self._guard:
            self._present -= models

    def _note_failure(
        self, name: str, record: ServedModelRecord | None, exc: TuneshipError
    ) -> None:
        revision = None if record is None or exc.retryable else record.revision
        previous = self._failed.get(name)
        if previous is not None and previous[1] is exc:
            return  # the remembered failure, already logged
        self._failed[name] = (revision, exc)
        if previous is None or str(previous[1]) != str(exc):
            log.warning("skipping served model %s: %s", name, _describe(exc))


def _describe(exc: BaseException) -> str:
    return exc.render() if isinstance(exc, TuneshipError) else f"{type(exc).__name__}: {exc}"


def start_replica_sync(
    ctx: StageContext, backend: ServingBackend, interval_s: float | None = DEFAULT_SYNC_S
) -> ReplicaSync:
    """Bring ``backend`` up to date with every served-model record, then keep it so.

    Blocks for the first sync, so call it before the gRPC server starts (the server
    reports SERVING as soon as it starts, and readiness is gRPC health). A record that
    cannot be applied is logged and skipped; the store or the backend being
    unreachable raises (the process exits and is restarted). Then syncs every
    ``interval_s`` seconds in a daemon thread (None or 0: never); ``stop()`` ends it.
    Pass the result to ``serving_service(..., replicas=...)``.
    """
    replicas = ReplicaSync(ctx.store, backend, ctx.work_root)
    report = replicas.sync_once(strict=True)
    log.info(
        "serving replica ready: %d served model(s) in the store, %d failed, %.1f s",
        len(report.outcomes), len(report.problems), report.seconds,
    )  # fmt: skip
    if interval_s is not None and interval_s > 0:
        replicas.start(interval_s)
    return replicas
