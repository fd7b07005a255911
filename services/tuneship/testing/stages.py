"""Scripted stage runners for controller tests.

They run behind the real ``StageServicer`` on real gRPC servers, so everything between
the controller and a worker is exercised; only the stage's work is replaced by a script
(steps with a delay, failures on chosen attempts) that finishes in milliseconds.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tuneship.common import errors, layout
from tuneship.common.events import EventSink, Log, Metrics, Progress
from tuneship.common.jobs import Artifact, StageJob, StageOutcome
from tuneship.common.stagework import artifact_of
from tuneship.common.store.base import ArtifactStore
from tuneship.common.store.commit import commit_stage


@dataclass
class ScriptedStage:
    """A stage that reports ``steps`` progress events ``step_s`` apart, then succeeds.

    ``failures`` maps an attempt number to the error type name to raise on it
    (e.g. ``{1: "Unavailable"}``); ``always`` raises that error on every attempt.
    ``calls`` records each started task id; ``peak`` the most runs at once.
    ``summary``: more of the result's summary (e.g. an export's report); ``eval_every``:
    a training also reports an ``eval_loss`` every that many steps. With a ``store``,
    the stage commits ``files`` (path -> bytes) there as its output, as real stages do.
    """

    name: str
    steps: int = 3
    step_s: float = 0.01
    failures: dict[int, str] = field(default_factory=dict)
    always: str | None = None
    summary: dict[str, object] = field(default_factory=dict)
    eval_every: int = 0
    store: ArtifactStore | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    peak: int = 0
    _running: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, job: StageJob, sink: EventSink) -> StageOutcome:
        with self._lock:
            self.calls.append(job.task_id)
            self._running += 1
            self.peak = max(self.peak, self._running)
        try:
            return self._work(job, sink)
        finally:
            with self._lock:
                self._running -= 1

    def _work(self, job: StageJob, sink: EventSink) -> StageOutcome:
        sink.emit(Log(self.name, f"{self.name} got inputs {sorted(job.inputs)}"))
        failure = self.always or self.failures.get(job.attempt)
        if failure:
            raise getattr(errors, failure)(f"scripted {failure} on attempt {job.attempt}")
        for step in range(1, self.steps + 1):
            time.sleep(self.step_s)
            if self.name == "train":
                sink.emit(
                    Metrics(self.name, {"loss": 1.0 / step, "tokens_per_s": 100.0 * step}, step)
                )
                if self.eval_every and step % self.eval_every == 0:
                    sink.emit(Metrics(self.name, {"eval_loss": 1.2 / step}, step))
            sink.emit(Progress(self.name, step, self.steps))
        summary: dict[str, object] = {"attempt": job.attempt, **self.summary}
        if self.name == "publish":
            summary["model"] = f"{job.pipeline}:latest"
        if self.store is not None:
            return StageOutcome({self.name: self._commit(job)}, summary)
        key = layout.join(job.output_prefix, layout.MANIFEST)
        return StageOutcome({self.name: Artifact(key, "0" * 64, 1)}, summary)

    def _commit(self, job: StageJob) -> Artifact:
        assert self.store is not None
        with tempfile.TemporaryDirectory() as folder:
            for name, data in self.files.items():
                path = Path(folder) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            manifest = commit_stage(
                self.store, Path(folder), pipeline=job.pipeline, stage=self.name,
                attempt=job.task_id,
            )  # fmt: skip
        return artifact_of(manifest)
