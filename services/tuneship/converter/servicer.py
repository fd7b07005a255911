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
REPORT_COLUMNS = (
    "quant_type", "size_bytes", "bits_per_weight", "perplexity", "kld_mean", "same_top_p",
    "generation_tokens_per_s", "verified", "baseline",
)  # fmt: skip
"""The columns of ``report.json``'s rows that the export stage's summary carries."""


def report_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of an export report, each cut to ``REPORT_COLUMNS``."""
    return [{k: row[k] for k in REPORT_COLUMNS if k in row} for row in report.get("rows", [])]


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
            # One string, so that the manifest's labels keep it for a reused export too:
            # the controller's Get carries it to clients (the web console's report table).
            "report": json.dumps(report_rows(report), separators=(",", ":")),
        }

    return run_committed_stage(
        ctx, job, sink, stage=STAGE, section=section,
        versions=versions, work=work,
    )  # fmt: skip


def converter_service(ctx: StageContext, toolchain: Toolchain, capacity: int = 1) -> StageService:
    """The stage's gRPC service, ready to start."""
    stage = StageServicer(STAGE, lambda job, sink: run_export(ctx, toolchain, job, sink), capacity)
    return stage_service(stage)
