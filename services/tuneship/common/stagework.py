"""What every stage worker does around its library function.

Parse the job's spec, reuse a committed result with the same cache key, fetch the
inputs from the store (sha256-verified), run, commit the output directory with its
manifest written last, and hand back the committed reference. Work directories are
per pipeline and stage (not per attempt), so a retried attempt on the same worker finds
the previous attempt's checkpoints.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tuneship.common import layout
from tuneship.common.errors import Cancelled, InvalidInput, TuneshipError
from tuneship.common.events import EventSink, Log
from tuneship.common.jobs import Artifact, StageJob, StageOutcome
from tuneship.common.manifest import Manifest, cache_key
from tuneship.common.spec import PipelineSpec
from tuneship.common.stages import stage_named
from tuneship.common.store import ArtifactStore
from tuneship.common.store.commit import (
    commit_stage,
    fetch_stage,
    find_committed,
    read_manifest,
)


def parse_job_spec(job: StageJob) -> PipelineSpec:
    """The job's spec, validated; InvalidInput names the field paths that are wrong."""
    try:
        return PipelineSpec.model_validate_json(job.spec_json)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"the job's spec is invalid: {problems}", where="spec_json") from exc


def artifact_of(manifest: Manifest) -> Artifact:
    """A committed manifest as the reference a later stage receives."""
    return Artifact(manifest.key, manifest.digest, manifest.total_size)


def require_input(job: StageJob, name: str) -> Artifact:
    if name not in job.inputs:
        raise InvalidInput(
            f"the {job.task_id} job has no {name!r} input (it has: {', '.join(job.inputs)})",
            where=f"StageRequest.inputs.{name}",
        )
    return job.inputs[name]


@dataclass
class StageContext:
    """Where a worker keeps its files and which store it uses."""

    store: ArtifactStore
    work_root: Path

    def workdir(self, job: StageJob, stage: str) -> Path:
        path = self.work_root / layout.segment(job.pipeline, "pipeline") / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def fetch(self, job: StageJob, name: str, dest: Path, sink: EventSink) -> tuple[Path, Manifest]:
        """Download input ``name`` into ``dest``; returns the local path of its content.

        A single-file input (a dataset) returns the file itself, a directory input the
        directory.
        """
        manifest = fetch_stage(self.store, require_input(job, name).key, dest, events=sink)
        if len(manifest.files) == 1 and "/" not in manifest.files[0].name:
            single = dest / manifest.files[0].name
            if not (dest / "config.json").exists():
                return single, manifest
        return dest, manifest

    def fetch_dataset(self, job: StageJob, workdir: Path, sink: EventSink) -> dict[str, Path]:
        """Download the job's dataset files; ``{"train": path, "eval": path}`` (eval only
        when the spec has one), for ``load_conversations(spec.dataset, files)``."""
        files = {"train": self.fetch(job, "train", workdir / "data-train", sink)[0]}
        if "eval" in job.inputs:
            files["eval"] = self.fetch(job, "eval", workdir / "data-eval", sink)[0]
        return files

    def input_manifests(self, job: StageJob, names: Sequence[str]) -> list[Manifest]:
        return [read_manifest(self.store, job.inputs[n].key) for n in names if n in job.inputs]


def run_committed_stage(
    ctx: StageContext,
    job: StageJob,
    sink: EventSink,
    *,
    stage: str,
    section: Mapping[str, Any],
    versions: Mapping[str, str],
    work: Callable[[Path], tuple[Path, dict[str, Any]]],
) -> StageOutcome:
    """Reuse a committed result with the same cache key, or run ``work`` and commit.

    ``work(workdir)`` returns (the directory to commit, a JSON-able summary). The cache
    key covers the manifests of the stage's inputs as ``common.stages`` lists them.
    """
    inputs = ctx.input_manifests(job, tuple(stage_named(stage).inputs))
    key = cache_key(section, tuple(m.ref for m in inputs), dict(versions), stage=stage)
    reused = find_committed(ctx.store, key)
    if reused is not None:
        sink.emit(Log(stage, f"reusing committed {stage} output {reused.key} (same inputs)"))
        summary = dict(reused.labels)
        return StageOutcome({stage: artifact_of(reused)}, {"reused": reused.key, **summary}, True)
    workdir = ctx.workdir(job, stage)
    try:
        out_dir, summary = work(workdir)
    except TuneshipError as exc:
        # An input no retry can fix: the copies of the base model and data are only
        # taking space. Anything else keeps them (and training's checkpoints) for the
        # retry or the rerun, which resume from there.
        if not exc.retryable and not isinstance(exc, Cancelled):
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    manifest = commit_stage(
        ctx.store, out_dir, pipeline=job.pipeline, stage=stage, attempt=job.task_id,
        inputs=inputs, tool_versions=versions, spec_section=section,
        labels={k: str(v) for k, v in summary.items() if isinstance(v, str | int | float)},
        events=sink,
    )  # fmt: skip
    shutil.rmtree(workdir, ignore_errors=True)  # committed: local copies are no longer needed
    return StageOutcome({stage: artifact_of(manifest)}, summary)
