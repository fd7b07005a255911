"""``ConverterService``: convert, quantize, verify and evaluate behind gRPC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneship.common.events import EventSink
from tuneship.common.jobs import StageJob, StageOutcome
from tuneship.common.stagework import StageContext, parse_job_spec, run_committed_stage
from tuneship.common.toolchain import Toolchain
from tuneship.common.wire import StageService, StageServicer, stage_service
from tuneship.converter import export

STAGE = "export"


def run_export(
    ctx: StageContext, toolchain: Toolchain, job: StageJob, sink: EventSink
) -> StageOutcome:
    """Fetch the merged model and held-out data, export, commit GGUFs and the report."""
    spec = parse_job_spec(job)
    versions = {"llama.cpp": toolchain.commit, "llama-cpp-python": toolchain.version}
    # The held-out split depends on how the dataset is read, not on where its files are.
    section = {
        "export": spec.export.model_dump(mode="json"),
        "dataset": spec.dataset.model_dump(mode="json", exclude={"train", "eval"}),
    }

    def work(workdir: Path) -> tuple[Path, dict[str, Any]]:
        model, _ = ctx.fetch(job, "model", workdir / "model", sink)
        files = ctx.fetch_dataset(job, workdir, sink)
        result = export(spec, model, workdir / "out", sink, toolchain, data=files)
        report = json.loads((result.out / "report.json").read_text())
        return workdir / "out", {
            "recommended": report.get("recommended") or "",
            "quant_types": ",".join(sorted(result.ggufs)),
        }

    return run_committed_stage(
        ctx, job, sink, stage=STAGE, section=section,
        versions=versions, work=work,
    )  # fmt: skip


def converter_service(ctx: StageContext, toolchain: Toolchain, capacity: int = 1) -> StageService:
    """The stage's gRPC service, ready to start."""
    stage = StageServicer(STAGE, lambda job, sink: run_export(ctx, toolchain, job, sink), capacity)
    return stage_service(stage)
