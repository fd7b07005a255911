"""Evaluation during training (``train.eval_steps``) on a real tiny model.

The dataset is built so that the eval loss rises: the eval conversations ask the
training questions and answer the opposite ("green" where training teaches "blue"), so
with a high learning rate the first evaluation is the best one and later ones only get
worse. That makes early stopping stop and ``export: best`` pick other weights than the
last ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from tuneship.common.errors import Aborted, Unavailable
from tuneship.common.events import ListSink, Log, Metrics
from tuneship.common.jobs import StageJob
from tuneship.common.spec import PipelineSpec
from tuneship.common.stagework import StageContext
from tuneship.common.store import LocalStore
from tuneship.common.store.commit import fetch_stage
from tuneship.testing.tensorboard import scalars
from tuneship.testing.training import DiesAfterStep, training_job
from tuneship.trainer import train
from tuneship.trainer.servicer import run_train

pytestmark = pytest.mark.integration


def conversation(question: str, answer: str) -> str:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": messages})


@pytest.fixture(scope="module")
def contradicting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.jsonl teaches "blue"; eval.jsonl asks the same and answers "green"."""
    data = tmp_path_factory.mktemp("contradicting")
    questions = [f"Question {i}: what colour is the sky?" for i in range(16)]
    lines = [conversation(q, "blue blue blue") for q in questions]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = [conversation(q, "green green green") for q in questions[:4]]
    (data / "eval.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return data


def train_section(**fields: Any) -> dict[str, Any]:
    return {
        "learning_rate": 1e-2, "lr_scheduler_type": "constant", "warmup_ratio": 0.0,
        "per_device_train_batch_size": 2, "save_steps": 100, "seed": 7, **fields,
    }  # fmt: skip


def make_spec(base: Path, data: Path, **fields: Any) -> PipelineSpec:
    return PipelineSpec.model_validate({
        "apiVersion": "tuneship/v1", "metadata": {"name": "evaluated"},
        "model": {"base": str(base)},
        "dataset": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")},
        "train": train_section(**fields),
    })  # fmt: skip


def rows(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def curve(out: Path) -> list[tuple[int, float]]:
    return [(int(row["step"]), row["eval_loss"]) for row in rows(out) if "eval_loss" in row]


def weights(directory: Path) -> dict[str, Any]:
    """The tensors of an adapter or a whole model saved in ``directory``."""
    from safetensors.torch import load_file

    adapter = directory / "adapter_model.safetensors"
    return load_file(str(adapter if adapter.is_file() else directory / "model.safetensors"))


def trained_weights_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The LoRA matrices of two adapters, or every tensor of two models, are equal."""
    import torch

    lora = [name for name in a if "lora_" in name and name in b]
    shared = lora or [name for name in a if name in b]
    assert shared and (lora or a.keys() == b.keys()), (sorted(a)[:4], sorted(b)[:4])
    return all(torch.equal(a[name], b[name]) for name in shared)


class KeepsCheckpoints(ListSink):
    """Copies each checkpoint aside when it is reported saved (the finished training
    removes its checkpoints)."""

    def __init__(self, partial: Path, aside: Path) -> None:
        super().__init__()
        self.partial, self.aside = partial, aside

    def emit(self, event) -> None:
        super().emit(event)
        if isinstance(event, Log) and event.message.startswith("checkpoint saved at step "):
            step = event.message.rsplit(" ", 1)[-1]
            source = self.partial / "checkpoints" / f"checkpoint-{step}"
            shutil.copytree(source, self.aside / f"checkpoint-{step}", dirs_exist_ok=True)


@pytest.mark.timeout(120)
def test_the_eval_curve_is_in_the_metrics_tensorboard_events_and_manifest(
    tiny_chatml: Path, contradicting: Path, tmp_path: Path
) -> None:
    spec = make_spec(tiny_chatml, contradicting, max_steps=6, eval_steps=2, logging_steps=3)
    sink = ListSink()
    result = train(spec, tiny_chatml, tmp_path / "out", sink)
    out = result.out

    # logging_steps 3 logs 3 and 6; the evaluated steps 2 and 4 get a row of their own
    assert [row["step"] for row in rows(out)] == [2, 3, 4, 6]
    assert all("loss" in row for row in rows(out))
    evaluated = curve(out)
    assert [step for step, _ in evaluated] == [2, 4, 6]
    found = scalars(out / "tensorboard")
    assert [step for step, _ in found["eval/loss"]] == [2, 4, 6]
    got = [value for _, value in found["eval/loss"]]
    assert got == pytest.approx([loss for _, loss in evaluated], rel=1e-6)

    events = [(e.step, e.values["eval_loss"]) for e in sink.of_type(Metrics)
              if "eval_loss" in e.values]  # fmt: skip
    assert events == evaluated
    logs = [e.message for e in sink.of_type(Log)]
    assert any(m.startswith("eval loss ") and m.endswith("at step 2 (new best)") for m in logs)

    best_step, best_loss = min(evaluated, key=lambda point: point[1])
    summary = result.manifest["metrics"]["evaluation"]
    assert summary["best_step"] == best_step and summary["evaluations"] == 3
    assert summary["best_eval_loss"] == pytest.approx(best_loss)
    assert (summary["exported"], summary["exported_step"]) == ("last", 6)
    assert result.manifest["metrics"]["eval_loss"] == pytest.approx(evaluated[-1][1])
    assert (out / "loss.png").stat().st_size > 0


@pytest.mark.timeout(120)
def test_evaluation_batches_stay_out_of_the_training_token_counts(
    tiny_chatml: Path, contradicting: Path, tmp_path: Path
) -> None:
    found = {}
    for name, fields in (("plain", {}), ("evaluated", {"eval_steps": 1})):
        spec = make_spec(tiny_chatml, contradicting, max_steps=3, **fields)
        found[name] = train(spec, tiny_chatml, tmp_path / name, ListSink()).manifest["metrics"]
    assert found["evaluated"]["evaluation"]["evaluations"] == 3
    assert found["plain"]["padding_fraction"] > 0  # so that counted eval tokens would show
    assert found["evaluated"]["padding_fraction"] == found["plain"]["padding_fraction"]


@pytest.mark.timeout(120)
def test_early_stopping_stops_when_the_eval_loss_stops_improving_and_says_why(
    tiny_chatml: Path, contradicting: Path, tmp_path: Path
) -> None:
    spec = make_spec(
        tiny_chatml, contradicting, max_steps=40, eval_steps=1, early_stopping_patience=3
    )
    sink = ListSink()
    result = train(spec, tiny_chatml, tmp_path / "out", sink)

    evaluated = curve(result.out)
    best_step = min(evaluated, key=lambda point: point[1])[0]
    assert result.steps == best_step + 3 < 40
    assert [step for step, _ in evaluated] == list(range(1, result.steps + 1))
    assert result.manifest["metrics"]["evaluation"]["stopped_early_at"] == result.steps
    [stopped] = [e.message for e in sink.of_type(Log) if e.message.startswith("early stopping")]
    assert f"early stopping at step {result.steps} of 40" in stopped
    assert "has not improved for 3 evaluations (early_stopping_patience: 3)" in stopped
    assert f"at step {best_step}" in stopped


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("method", "learning_rate"), [("lora", 1e-2), ("full", 5e-3)])
def test_export_best_writes_the_weights_of_the_best_checkpoint(
    tiny_chatml: Path, contradicting: Path, tmp_path: Path, method: str, learning_rate: float
) -> None:
    spec = make_spec(tiny_chatml, contradicting, max_steps=6, eval_steps=2, export="best",
                     method=method, learning_rate=learning_rate)  # fmt: skip
    out, aside = tmp_path / "out", tmp_path / "aside"
    sink = KeepsCheckpoints(tmp_path / "out.partial", aside)
    result = train(spec, tiny_chatml, out, sink)

    evaluated = curve(out)
    best_step, best_loss = min(evaluated, key=lambda point: point[1])
    assert best_step < 6, evaluated  # the data makes later evaluations worse
    # a checkpoint at each new best and at the end, none at save_steps (100)
    new_bests = [step for i, (step, loss) in enumerate(evaluated)
                 if all(loss < earlier for _, earlier in evaluated[:i])]  # fmt: skip
    assert sorted(int(p.name.split("-")[1]) for p in aside.iterdir()) == sorted({*new_bests, 6})
    exported = weights(out / ("adapter" if method == "lora" else "model"))
    assert trained_weights_equal(exported, weights(aside / f"checkpoint-{best_step}"))
    assert not trained_weights_equal(exported, weights(aside / "checkpoint-6"))
    summary = result.manifest["metrics"]["evaluation"]
    assert (summary["exported"], summary["exported_step"]) == ("best", best_step)
    assert result.manifest["metrics"]["eval_loss"] == pytest.approx(best_loss)
    assert any(f"exported the weights of step {best_step}" in e.message
               for e in sink.of_type(Log))  # fmt: skip


@pytest.mark.timeout(180)
def test_a_run_interrupted_after_its_best_resumes_and_exports_that_best(
    tiny_chatml: Path, contradicting: Path, tmp_path: Path
) -> None:
    fields = {"max_steps": 6, "eval_steps": 1, "export": "best", "method": "full",
              "learning_rate": 5e-3}  # fmt: skip
    spec = make_spec(tiny_chatml, contradicting, **fields)
    straight = train(spec, tiny_chatml, tmp_path / "straight", ListSink())
    ended = []

    def stop_after_three() -> bool:  # a checkpoint at step 3, after the best (step 1)
        ended.append(1)
        return len(ended) >= 3

    with pytest.raises(Unavailable):
        train(spec, tiny_chatml, tmp_path / "resumed", ListSink(), stop=stop_after_three)
    resumed = train(spec, tiny_chatml, tmp_path / "resumed", ListSink())

    expected = straight.manifest["metrics"]["evaluation"]
    assert expected["best_step"] == 1 and expected["exported_step"] == 1
    got = resumed.manifest["metrics"]["evaluation"]
    assert got == expected | {
        "best_eval_loss": pytest.approx(expected["best_eval_loss"]),
        "last_eval_loss": pytest.approx(expected["last_eval_loss"], rel=1e-5),
    }
    assert [step for step, _ in curve(resumed.out)] == list(range(1, 7))
    assert trained_weights_equal(weights(resumed.out / "model"), weights(straight.out / "model"))


def job(store: LocalStore, base: Path, data: Path, attempt: int) -> StageJob:
    # A full fine-tune (whole-model checkpoints) learns this data in a few steps, so
    # the eval loss rises from the first evaluation on.
    train_fields = train_section(max_steps=30, eval_steps=1, save_steps=2, method="full",
                                 learning_rate=5e-3, early_stopping_patience=4,
                                 export="best")  # fmt: skip
    return training_job(store, "best", train_fields, base, data, attempt)


def committed(store: LocalStore, outcome: Any, where: Path) -> tuple[dict[str, Any], Path]:
    fetch_stage(store, outcome.outputs["train"].key, where)
    return json.loads((where / "training-manifest.json").read_text()), where


@pytest.mark.timeout(240)
def test_a_retry_on_another_worker_keeps_the_best_checkpoint_and_the_patience(
    tiny_chatml: Path, contradicting: Path, tmp_path: Path
) -> None:
    reference_store = LocalStore(tmp_path / "reference-store")
    outcome = run_train(
        StageContext(reference_store, tmp_path / "reference"),
        job(reference_store, tiny_chatml, contradicting, 1),
        ListSink(),
    )
    expected, expected_out = committed(reference_store, outcome, tmp_path / "expected")
    best = expected["metrics"]["evaluation"]["best_step"]
    stopped = expected["metrics"]["evaluation"]["stopped_early_at"]
    # The worker dies after the checkpoint at step 4, and two newer checkpoints than the
    # best one's are in the store by then (the store keeps the 2 newest, and the best).
    assert best == 1 and stopped == best + 4 == 5

    store = LocalStore(tmp_path / "store")
    with pytest.raises(Aborted):
        run_train(
            StageContext(store, tmp_path / "worker-a"),
            job(store, tiny_chatml, contradicting, 1),
            DiesAfterStep(4),
        )
    shutil.rmtree(tmp_path / "worker-a")  # the pod is gone

    second = ListSink()
    outcome = run_train(
        StageContext(store, tmp_path / "worker-b"),
        job(store, tiny_chatml, contradicting, 2),
        second,
    )
    logs = [e.message for e in second.of_type(Log)]
    assert any("resuming from the stored checkpoint at step 4" in m for m in logs)
    assert any(f"restored the best evaluation's checkpoint at step {best}" in m for m in logs)
    got, got_out = committed(store, outcome, tmp_path / "got")
    assert got["metrics"]["evaluation"] == expected["metrics"]["evaluation"] | {
        "best_eval_loss": pytest.approx(expected["metrics"]["evaluation"]["best_eval_loss"]),
        "last_eval_loss": pytest.approx(expected["metrics"]["evaluation"]["last_eval_loss"]),
    }
    assert trained_weights_equal(weights(got_out / "model"), weights(expected_out / "model"))


@pytest.mark.timeout(600)
def test_two_ranks_evaluate_stop_and_export_like_one_process(
    tiny_chatml: Path, contradicting: Path, tmp_path: Path
) -> None:
    """Each rank evaluates half of the eval split; the gathered loss, the early stop and
    the exported best weights are those of one process with the same global batch."""
    found = {}
    for name, devices, batch in (("single", 1, 4), ("ddp", 2, 2)):
        spec = make_spec(tiny_chatml, contradicting, max_steps=30, eval_steps=1, save_steps=2,
                         method="full", learning_rate=5e-3, early_stopping_patience=2,
                         export="best", devices=devices, per_device_train_batch_size=batch,
                         lora={"lora_dropout": 0.0})  # fmt: skip
        sink = ListSink()
        found[name] = (train(spec, tiny_chatml, tmp_path / name, sink), sink)
    (single, _), (ddp, sink) = found["single"], found["ddp"]
    assert ddp.manifest["metrics"]["processes"] == 2
    one, two = curve(single.out), curve(ddp.out)
    assert [step for step, _ in one] == [step for step, _ in two]
    assert [loss for _, loss in two] == pytest.approx([loss for _, loss in one], rel=1e-4)
    summary = ddp.manifest["metrics"]["evaluation"]
    assert (
        summary["stopped_early_at"] == single.manifest["metrics"]["evaluation"]["stopped_early_at"]
    )
    assert summary["stopped_early_at"] == ddp.steps < 30
    assert summary["exported_step"] == summary["best_step"] < ddp.steps
    # once each (rank 0 alone relays), and the weights of the best step
    assert sum(e.message.startswith("early stopping") for e in sink.of_type(Log)) == 1
    # Adam turns the float rounding of near-zero gradients into steps of up to the
    # learning rate (5e-3): 3.4e-5 was the largest difference seen (printed below)
    a, b = weights(single.out / "model"), weights(ddp.out / "model")
    worst = max(float((tensor - b[key]).abs().max()) for key, tensor in a.items())
    print(f"DDP {{'largest_exported_weight_difference': {worst:.2e}}}")
    assert a.keys() == b.keys() and worst < 2e-4


@pytest.mark.timeout(300)
def test_dpo_evaluates_during_training_and_exports_its_best_step(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    data = sample_data / "preference"
    spec = PipelineSpec.model_validate({
        "apiVersion": "tuneship/v1", "metadata": {"name": "dpo-evaluated"},
        "model": {"base": str(tiny_chatml)},
        "dataset": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")},
        "train": {"objective": "dpo", "max_steps": 6, "learning_rate": 5e-3, "dtype": "float32",
                  "per_device_train_batch_size": 4, "eval_steps": 2, "export": "best",
                  "save_steps": 100},
    })  # fmt: skip
    out, aside = tmp_path / "out", tmp_path / "aside"
    sink = KeepsCheckpoints(tmp_path / "out.partial", aside)
    result = train(spec, tiny_chatml, out, sink)

    evaluated = curve(out)
    assert [step for step, _ in evaluated] == [2, 4, 6]
    best_step, best_loss = min(evaluated, key=lambda point: point[1])
    metrics = result.manifest["metrics"]
    assert metrics["evaluation"]["exported_step"] == best_step
    assert metrics["eval_loss"] == pytest.approx(best_loss)
    assert "eval_reward_margin" in metrics  # TRL's metrics of the exported step's evaluation
    exported = weights(out / "adapter")
    assert trained_weights_equal(exported, weights(aside / f"checkpoint-{best_step}"))

    # The pairs of the three evaluations are not counted as trained tokens.
    section = {**spec.train.model_dump(), "eval_steps": None, "export": "last"}
    plain = spec.model_copy(update={"train": type(spec.train).model_validate(section)})
    unevaluated = train(plain, tiny_chatml, tmp_path / "plain", ListSink()).manifest["metrics"]
    assert unevaluated["padding_fraction"] > 0
    assert metrics["padding_fraction"] == unevaluated["padding_fraction"]
