"""``TrainerService``: the training stage behind gRPC, inputs and outputs in the store."""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from tuneship.common import layout
from tuneship.common.errors import Unavailable
from tuneship.common.events import Event, EventSink, Log
from tuneship.common.jobs import StageJob, StageOutcome
from tuneship.common.manifest import Manifest
from tuneship.common.stagework import StageContext, parse_job_spec, run_committed_stage
from tuneship.common.store import ArtifactStore
from tuneship.common.store.commit import (
    commit_checkpoint,
    fetch_stage,
    latest_checkpoint,
    prune_checkpoints,
    stored_checkpoint,
)
from tuneship.common.wire import StageService, StageServicer, stage_service
from tuneship.trainer import train
from tuneship.trainer.evaluation import best_step_of
from tuneship.trainer.run import last_checkpoint

STAGE = "train"


def library_versions() -> dict[str, str]:
    """The versions that decide what training produces (part of the cache key): the
    libraries the training loop runs on, and no others, so an upgrade of an unused one
    does not throw away committed results."""
    return {name: metadata.version(name) for name in ("torch", "transformers", "peft")}


def summary_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The stage summary: steps, losses, and a preference objective's held-out margin."""
    metrics = manifest["metrics"]
    names = ("steps", "final_loss", "eval_loss", "eval_reward_margin", "eval_reward_accuracy")
    return {
        "objective": manifest.get("objective", "sft"),
        **{name: metrics[name] for name in names if metrics.get(name) is not None},
    }


def _step(checkpoint: str) -> int:
    return int(Path(checkpoint).name.split("-")[-1])


class CheckpointMirror:
    """An event sink that copies each new complete local checkpoint to the store, so a
    retry on another worker resumes from it (the local copy serves retries here)."""

    def __init__(self, sink: EventSink, store: ArtifactStore, pipeline: str, partial: Path):
        self.sink, self.store, self.pipeline, self.partial = sink, store, pipeline, partial
        latest = last_checkpoint(partial / "checkpoints")
        self.mirrored = _step(latest) if latest else 0

    def emit(self, event: Event) -> None:
        self.sink.emit(event)
        # Every event, not only progress: the trainer reports "checkpoint saved" right
        # after saving, so the checkpoint is stored before the next step runs. (Waiting
        # for the next step's progress left a window in which a killed worker lost
        # save_steps + 1 steps.)
        self.sync()

    def sync(self) -> None:
        latest = last_checkpoint(self.partial / "checkpoints")
        if latest is None or _step(latest) <= self.mirrored:
            return
        step = _step(latest)
        with tempfile.TemporaryDirectory(dir=self.partial.parent) as staging:
            shutil.copytree(latest, Path(staging) / "checkpoint")
            if (self.partial / "metrics.jsonl").is_file():
                shutil.copy2(self.partial / "metrics.jsonl", Path(staging) / "metrics.jsonl")
            commit_checkpoint(
                self.store, Path(staging), pipeline=self.pipeline, stage=STAGE, step=step
            )
        # The best evaluation's checkpoint (export: best) stays until the end as well.
        best = best_step_of(Path(latest))
        prune_checkpoints(self.store, pipeline=self.pipeline, stage=STAGE, keep=2,
                          also_keep=() if best is None else (best,))  # fmt: skip
        self.mirrored = step
        self.sink.emit(Log(STAGE, f"checkpoint at step {step} saved to the store"))


def restore_checkpoint(store: ArtifactStore, pipeline: str, partial: Path, sink: EventSink) -> int:
    """Put the store's newest checkpoint where the trainer resumes from, when this worker
    has none of its own, with the best evaluation's checkpoint when it is another one
    (``export: best`` loads it at the end); returns the newest one's step (0 when there
    was nothing to restore)."""
    if last_checkpoint(partial / "checkpoints") is not None:
        return 0
    manifest = latest_checkpoint(store, pipeline=pipeline, stage=STAGE)
    if manifest is None:
        return 0
    step = _restore(store, manifest, partial, sink, with_metrics=True)
    best = best_step_of(partial / "checkpoints" / f"checkpoint-{step}")
    stored_best = (
        stored_checkpoint(store, pipeline=pipeline, stage=STAGE, step=best)
        if best is not None and best != step
        else None
    )
    if stored_best is not None:
        _restore(store, stored_best, partial, sink, with_metrics=False)
        sink.emit(Log(STAGE, f"restored the best evaluation's checkpoint at step {best}"))
    sink.emit(Log(STAGE, f"resuming from the stored checkpoint at step {step}"))
    return step


def _restore(
    store: ArtifactStore, manifest: Manifest, partial: Path, sink: EventSink, *, with_metrics: bool
) -> int:
    """Fetch one stored checkpoint into ``partial/checkpoints`` (and its metrics.jsonl)."""
    step = int(manifest.labels.get(layout.Labels.STEP, "0"))
    fetched = partial.parent / ".restored-checkpoint"
    shutil.rmtree(fetched, ignore_errors=True)
    fetch_stage(store, manifest.key, fetched, events=sink)
    (partial / "checkpoints").mkdir(parents=True, exist_ok=True)
    target = partial / "checkpoints" / f"checkpoint-{step}"
    shutil.rmtree(target, ignore_errors=True)
    (fetched / "checkpoint").rename(target)
    if with_metrics and (fetched / "metrics.jsonl").is_file():
        (fetched / "metrics.jsonl").replace(partial / "metrics.jsonl")
    shutil.rmtree(fetched, ignore_errors=True)
    return step


def run_train(ctx: StageContext, job: StageJob, sink: EventSink) -> StageOutcome:
    """Fetch the base model and data, train (resuming from this worker's checkpoints of
    an earlier attempt), commit the output."""
    spec = parse_job_spec(job)
    dataset = spec.dataset.model_dump(mode="json", exclude={"train", "eval"})
    section = {
        # Where progress is reported is not what is trained: a changed report_to reuses
        # a committed result.
        "train": spec.train.model_dump(mode="json", exclude={"report_to"}),
        "template": spec.template.model_dump(mode="json"),
        "dataset": dataset,
        "model": spec.model.model_dump(mode="json", exclude={"base"}),
    }

    def work(workdir: Path) -> tuple[Path, dict[str, Any]]:
        base, _ = ctx.fetch(job, "base", workdir / "base", sink)
        files = ctx.fetch_dataset(job, workdir, sink)
        partial = workdir / "out.partial"
        restore_checkpoint(ctx.store, job.pipeline, partial, sink)
        mirror = CheckpointMirror(sink, ctx.store, job.pipeline, partial)
        # A task sink knows when its worker is stopping (SIGTERM): save and hand over.
        stop = getattr(sink, "stop_requested", None)
        try:
            result = train(spec, base, workdir / "out", mirror, resume=True, data=files,
                           stop=stop, run_name=job.pipeline)  # fmt: skip
        except Unavailable:
            mirror.sync()  # the checkpoint saved on the way out, for the next attempt
            raise
        return workdir / "out", summary_of(result.manifest)

    return run_committed_stage(
        ctx, job, sink, stage=STAGE, section=section, versions=library_versions(), work=work,
    )  # fmt: skip


def trainer_service(ctx: StageContext, capacity: int = 1) -> StageService:
    """The stage's gRPC service, ready to start."""
    stage = StageServicer(STAGE, lambda job, sink: run_train(ctx, job, sink), capacity)
    return stage_service(stage)
