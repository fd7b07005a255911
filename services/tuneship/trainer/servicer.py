"""``TrainerService``: the training stage behind gRPC, inputs and outputs in the store."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from tuneship.common.events import EventSink
from tuneship.common.jobs import StageJob, StageOutcome
from tuneship.common.stagework import StageContext, parse_job_spec, run_committed_stage
from tuneship.common.wire import StageServicer, stage_service
from tuneship.trainer import train

STAGE = "train"


def library_versions() -> dict[str, str]:
    """The versions that decide what training produces (part of the cache key)."""
    return {name: metadata.version(name) for name in ("torch", "transformers", "trl", "peft")}


def run_train(ctx: StageContext, job: StageJob, sink: EventSink) -> StageOutcome:
    """Fetch the base model and data, train (resuming from this worker's checkpoints of
    an earlier attempt), commit the output."""
    spec = parse_job_spec(job)
    dataset = spec.dataset.model_dump(mode="json", exclude={"train", "eval"})
    section = {
        "train": spec.train.model_dump(mode="json"),
        "template": spec.template.model_dump(mode="json"),
        "dataset": dataset,
        "model": spec.model.model_dump(mode="json", exclude={"base"}),
    }

    def work(workdir: Path) -> tuple[Path, dict[str, Any]]:
        base, _ = ctx.fetch(job, "base", workdir / "base", sink)
        train_file, _ = ctx.fetch(job, "train", workdir / "data-train", sink)
        eval_file = (
            ctx.fetch(job, "eval", workdir / "data-eval", sink)[0] if "eval" in job.inputs else None
        )
        local = spec.model_copy(
            update={"dataset": spec.dataset.model_copy(
                update={"train": str(train_file), "eval": str(eval_file) if eval_file else None}
            )}
        )  # fmt: skip
        result = train(local, base, workdir / "out", sink, resume=True)
        return workdir / "out", {"steps": result.steps, "final_loss": result.final_loss}

    return run_committed_stage(
        ctx, job, sink, stage=STAGE, section=section, input_names=["base", "train", "eval"],
        versions=library_versions(), work=work,
    )  # fmt: skip


def trainer_service(ctx: StageContext, capacity: int = 1) -> tuple[Any, Any, str, StageServicer]:
    """(add function, servicer, service name, stage servicer) for a gRPC server."""
    stage = StageServicer(STAGE, lambda job, sink: run_train(ctx, job, sink), capacity)
    return (*stage_service(stage), stage)
