"""Experiment tracking on a real tiny training: the TensorBoard file stored in the output
holds metrics.jsonl's numbers (each step once, also after a resume); a tracker that is
not installed is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.errors import FailedPrecondition, Unavailable
from tuneship.common.events import ListSink
from tuneship.common.spec import PipelineSpec
from tuneship.testing.tensorboard import scalars
from tuneship.trainer import train

pytestmark = pytest.mark.integration

STEPS = 6


def make_spec(base: Path, data: Path, **train_fields) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "apiVersion": "tuneship/v1",
            "metadata": {"name": "tracked"},
            "model": {"base": str(base)},
            "dataset": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")},
            "train": {
                "max_steps": STEPS,
                "learning_rate": 1e-2,
                "per_device_train_batch_size": 2,
                "save_steps": 3,
                **train_fields,
            },
        }
    )


def assert_tensorboard_equals_metrics(out: Path) -> dict[str, list[tuple[int, float]]]:
    files = list((out / "tensorboard").iterdir())
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents."), files
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    found = scalars(out / "tensorboard")
    assert [step for step, _ in found["train/loss"]] == [row["step"] for row in rows]
    assert [step for step, _ in found["train/loss"]] == list(range(1, STEPS + 1))
    for field in ("loss", "learning_rate", "tokens_per_s"):
        expected = [row[field] for row in rows]
        got = [value for _, value in found[f"train/{field}"]]
        assert got == pytest.approx(expected, rel=1e-6), field  # float32 in the file
    return found


@pytest.mark.timeout(240)
def test_the_stored_tensorboard_scalars_are_the_metrics(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = train(make_spec(tiny_chatml, sample_data / "pirate"), tiny_chatml, out, ListSink())
    found = assert_tensorboard_equals_metrics(out)
    eval_loss = result.manifest["metrics"]["eval_loss"]
    assert found["eval/loss"] == [(STEPS, pytest.approx(eval_loss, rel=1e-6))]


@pytest.mark.timeout(300)
def test_a_resumed_training_has_each_step_once(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    spec = make_spec(tiny_chatml, sample_data / "pirate")
    out = tmp_path / "out"
    steps_ended = []

    def stop_after_four() -> bool:  # saves a checkpoint at step 4; steps 1-4 are logged
        steps_ended.append(1)
        return len(steps_ended) >= 4

    with pytest.raises(Unavailable):
        train(spec, tiny_chatml, out, ListSink(), stop=stop_after_four)
    train(spec, tiny_chatml, out, ListSink())
    assert_tensorboard_equals_metrics(out)


@pytest.mark.timeout(60)
def test_a_tracker_that_is_not_installed_is_refused_before_any_work(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    # mlflow absent whatever this machine has (the project does not depend on it)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *args: None if name == "mlflow" else real_find_spec(name, *args),
    )  # fmt: skip
    spec = make_spec(tiny_chatml, sample_data / "pirate", report_to=["mlflow"])
    with pytest.raises(FailedPrecondition) as caught:
        train(spec, tiny_chatml, tmp_path / "out", ListSink())
    assert caught.value.where == "train.report_to"
    assert "mlflow" in caught.value.message and "not installed" in caught.value.message
    assert "pip install mlflow" in (caught.value.hint or "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(60)
def test_the_run_name_and_trackers_reach_transformers(tmp_path: Path) -> None:
    from tuneship.common.spec import TrainSpec
    from tuneship.trainer.sft import sft_config

    config = sft_config(TrainSpec(), tmp_path, packed=False, run_name="pipeline-7")
    assert config.run_name == "pipeline-7"
    assert config.report_to == []  # transformers' "none": no callback of its own
