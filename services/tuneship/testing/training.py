"""Training stage jobs for worker-level tests: a job as the controller sends it, with
its inputs uploaded to a store, and a worker that is lost partway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneship.common.errors import Aborted
from tuneship.common.events import Event, ListSink, Progress
from tuneship.common.jobs import Artifact, StageJob
from tuneship.common.spec import PipelineSpec
from tuneship.common.store import ArtifactStore
from tuneship.common.store.commit import upload_input


def training_job(
    store: ArtifactStore,
    name: str,
    train: dict[str, Any],
    base: Path,
    data: Path,
    attempt: int,
    *,
    held_out: bool = True,
) -> StageJob:
    """Attempt ``attempt`` of pipeline ``name``'s train stage: ``base`` and
    ``data/train.jsonl`` (and ``data/eval.jsonl`` when ``held_out``) uploaded as inputs,
    ``train`` as the spec's train section."""
    files = {"train": data / "train.jsonl", **({"eval": data / "eval.jsonl"} if held_out else {})}
    spec = PipelineSpec.model_validate(
        {
            "apiVersion": "tuneship/v1",
            "metadata": {"name": name},
            "model": {"base": "store:base"},
            "dataset": {role: f"store:{role}" for role in files},
            "train": train,
        }
    )
    inputs = {
        "base": upload_input(store, base, kind="model"),
        **{role: upload_input(store, path, kind="dataset") for role, path in files.items()},
    }
    refs = {k: Artifact(m.key, m.digest, m.total_size) for k, m in inputs.items()}
    return StageJob(f"{name}.train.{attempt}", name, spec.model_dump_json(), refs, "", attempt)


class DiesAfterStep(ListSink):
    """A worker that is lost after ``step`` (the stage sees an error at its next event)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def emit(self, event: Event) -> None:
        super().emit(event)
        if isinstance(event, Progress) and event.unit == "steps" and event.step > self.step:
            raise Aborted("worker lost")
