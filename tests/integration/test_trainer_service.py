"""The training service resumes a retried task from the checkpoint in the store, on a
worker that has none of the first attempt's files (a different pod)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tuneship.common.errors import Aborted
from tuneship.common.events import ListSink, Log, Metrics
from tuneship.common.jobs import Artifact, StageJob
from tuneship.common.spec import PipelineSpec
from tuneship.common.stagework import StageContext
from tuneship.common.store import LocalStore
from tuneship.common.store.commit import fetch_stage, latest_checkpoint, upload_input
from tuneship.testing.training import DiesAfterStep, training_job
from tuneship.trainer.servicer import run_train

pytestmark = pytest.mark.integration


def job(store: LocalStore, base: Path, data: Path, attempt: int) -> StageJob:
    train = {"max_steps": 12, "save_steps": 4, "learning_rate": 0.003, "seed": 7}
    return training_job(store, "resume", train, base, data, attempt, held_out=False)


def losses(sink: ListSink) -> dict[int, float]:
    return {e.step: e.values["loss"] for e in sink.of_type(Metrics)}


def test_retry_on_a_fresh_worker_resumes_from_the_stored_checkpoint(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    data = sample_data / "pirate"
    reference_store = LocalStore(tmp_path / "reference-store")
    reference = ListSink()
    run_train(
        StageContext(reference_store, tmp_path / "reference"),
        job(reference_store, tiny_chatml, data, 1),
        reference,
    )

    store = LocalStore(tmp_path / "store")
    first = DiesAfterStep(5)
    with pytest.raises(Aborted):
        run_train(
            StageContext(store, tmp_path / "worker-a"), job(store, tiny_chatml, data, 1), first
        )
    stored = latest_checkpoint(store, pipeline="resume", stage="train")
    assert stored is not None and stored.labels["tuneship.dev/step"] == "4"
    shutil.rmtree(tmp_path / "worker-a")  # the pod is gone

    second = ListSink()
    outcome = run_train(
        StageContext(store, tmp_path / "worker-b"), job(store, tiny_chatml, data, 2), second
    )
    logs = [e.message for e in second.of_type(Log)]
    assert any("resuming from the stored checkpoint at step 4" in m for m in logs)
    assert min(losses(second)) == 5  # steps 1-4 were not trained again
    expected = losses(reference)
    for step, loss in losses(second).items():
        assert loss == pytest.approx(expected[step], rel=1e-5)
    fetch_stage(store, outcome.outputs["train"].key, tmp_path / "result")
    manifest = json.loads((tmp_path / "result" / "training-manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 12


def test_a_bad_record_is_named_by_the_users_location_not_the_work_copy(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    from tuneship.common.errors import InvalidInput

    lines = (sample_data / "pirate" / "train.jsonl").read_text().splitlines()
    bad = tmp_path / "train.jsonl"
    bad.write_text("\n".join([*lines[:3], '{"messages": "not a list"}', *lines[3:]]) + "\n")
    store = LocalStore(tmp_path / "store")
    spec = PipelineSpec.model_validate({
        "apiVersion": "tuneship/v1", "metadata": {"name": "bad"},
        "model": {"base": "store:x"}, "dataset": {"train": "data/train.jsonl"},
        "train": {"max_steps": 2},
    })  # fmt: skip
    inputs = {
        "base": upload_input(store, tiny_chatml, kind="model"),
        "train": upload_input(store, bad, kind="dataset"),
    }
    refs = {k: Artifact(m.key, m.digest, m.total_size) for k, m in inputs.items()}
    work = tmp_path / "worker"
    with pytest.raises(InvalidInput) as caught:
        run_train(StageContext(store, work), StageJob("bad.train.1", "bad", spec.model_dump_json(),
                                                       refs, "", 1), ListSink())  # fmt: skip
    assert caught.value.where == "data/train.jsonl:4"
    assert str(work) not in caught.value.render()
