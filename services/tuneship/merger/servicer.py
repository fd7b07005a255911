"""``MergerService``: the merge stage behind gRPC, inputs and outputs in the store."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from tuneship.common.events import EventSink
from tuneship.common.jobs import StageJob, StageOutcome
from tuneship.common.stagework import StageContext, parse_job_spec, run_committed_stage
from tuneship.common.wire import StageService, StageServicer, stage_service
from tuneship.merger import merge

STAGE = "merge"


def run_merge(ctx: StageContext, job: StageJob, sink: EventSink) -> StageOutcome:
    """Fetch the base model and the training output, merge, commit the merged model."""
    spec = parse_job_spec(job)
    versions = {name: metadata.version(name) for name in ("torch", "transformers", "peft")}

    def work(workdir: Path) -> tuple[Path, dict[str, Any]]:
        base, _ = ctx.fetch(job, "base", workdir / "base", sink)
        train_out, _ = ctx.fetch(job, "train_out", workdir / "train-out", sink)
        result = merge(spec, base, train_out, workdir / "out", sink)
        return workdir / "out", {"dtype": result.dtype, "files": len(result.files)}

    return run_committed_stage(
        ctx, job, sink, stage=STAGE, section={"merge": spec.merge.model_dump(mode="json")},
        versions=versions, work=work,
    )  # fmt: skip


def merger_service(ctx: StageContext, capacity: int = 1) -> StageService:
    """The stage's gRPC service, ready to start."""
    stage = StageServicer(STAGE, lambda job, sink: run_merge(ctx, job, sink), capacity)
    return stage_service(stage)
