"""Preference tuning on a real tiny model: DPO and ORPO raise the chosen-over-rejected
margin on held-out pairs (questions no training pair asks), the loss covers exactly the
replies and their end-of-turn token, inspect-data shows both sides, and the result
merges like any adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.errors import InvalidInput
from tuneship.common.events import ListSink
from tuneship.common.preferences import load_preferences
from tuneship.common.spec import DatasetSpec, PipelineSpec
from tuneship.merger.merge import merge
from tuneship.testing.tensorboard import scalars as tensorboard_scalars
from tuneship.trainer import inspect_data, train
from tuneship.trainer.masking import AssistantMask, PairExample

pytestmark = pytest.mark.integration


def make_spec(base: Path, data: Path, objective: str, **train_fields) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "apiVersion": "tuneship/v1",
            "metadata": {"name": f"pref-{objective}"},
            "model": {"base": str(base)},
            "dataset": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")},
            "train": {
                "objective": objective,
                "max_steps": 12,
                "learning_rate": 5e-3,
                "per_device_train_batch_size": 4,
                "dtype": "float32",
                **train_fields,
            },
        }
    )


def held_out_pairs(tokenizer_dir: Path, data: Path) -> list[PairExample]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    mask = AssistantMask(tokenizer)
    pairs = load_preferences(DatasetSpec(train=str(data / "eval.jsonl"), eval_fraction=0.0))
    return [mask.encode_pair(p.prompt, p.chosen, p.rejected, p.where) for p in pairs.train]


def mean_margin(model, pairs: list[PairExample]) -> float:
    """Mean over pairs of log p(chosen | prompt) - log p(rejected | prompt), in nats."""
    import torch

    def logp(prompt: list[int], reply: list[int]) -> float:
        ids = torch.tensor([prompt + reply])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        scores = torch.log_softmax(logits.float(), dim=-1)
        return float(scores.gather(1, torch.tensor(reply)[:, None]).sum())

    margins = [logp(p.prompt_ids, p.chosen_ids) - logp(p.prompt_ids, p.rejected_ids) for p in pairs]
    return sum(margins) / len(margins)


def margins_before_and_after(base: Path, out: Path, data: Path) -> tuple[float, float]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    manifest = json.loads((out / "training-manifest.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.resize_token_embeddings(manifest["vocab"]["embedding_rows_after"])
    model = PeftModel.from_pretrained(model, out / "adapter").eval()
    pairs = held_out_pairs(out / "tokenizer", data)
    with model.disable_adapter():
        before = mean_margin(model, pairs)
    return before, mean_margin(model, pairs)


@pytest.mark.timeout(300)
def test_dpo_raises_the_margin_on_held_out_pairs_and_merges(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    data = sample_data / "preference"
    spec = make_spec(tiny_chatml, data, "dpo")
    events = ListSink()
    result = train(spec, tiny_chatml, tmp_path / "train", events)

    before, after = margins_before_and_after(tiny_chatml, result.out, data)
    print(f"DPO held-out margin (nats): before {before:.3f}, after {after:.3f}")
    assert after - before > 2.0  # measured: 2.6 -> 37.1 nats (mean of the 8 held-out pairs)
    manifest = result.manifest
    assert manifest["objective"] == "dpo" and manifest["method"] == "lora"
    assert manifest["metrics"]["eval_reward_margin"] > 0.5
    assert manifest["metrics"]["eval_reward_accuracy"] == 1.0
    assert manifest["dataset"]["eval_examples"] == 8
    assert manifest["mask"]["train_on"] == "chosen and rejected replies"
    # Only the trained adapter is saved, not DPO's frozen reference copy.
    assert sorted(p.name for p in (result.out / "adapter").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert any("objective: dpo" in getattr(e, "message", "") for e in events.events)
    # The reward margin per step, beside the loss, in metrics.jsonl and TensorBoard.
    rows = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all("reward_margin" in row for row in rows)
    assert rows[-1]["reward_margin"] > rows[0]["reward_margin"]
    scalars = tensorboard_scalars(result.out / "tensorboard")
    assert [v for _, v in scalars["train/reward_margin"]] == pytest.approx(
        [row["reward_margin"] for row in rows]
    )

    merged = merge(spec, tiny_chatml, result.out, tmp_path / "merged", ListSink())
    assert (merged.out / "model.safetensors").is_file()


@pytest.mark.timeout(300)
def test_orpo_raises_the_margin_on_held_out_pairs(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    data = sample_data / "preference"
    result = train(make_spec(tiny_chatml, data, "orpo"), tiny_chatml, tmp_path / "t", ListSink())
    before, after = margins_before_and_after(tiny_chatml, result.out, data)
    print(f"ORPO held-out margin (nats): before {before:.3f}, after {after:.3f}")
    assert after - before > 2.0
    assert result.manifest["objective"] == "orpo"


def test_the_loss_covers_each_reply_and_its_end_of_turn_token_only(
    tiny_chatml: Path, sample_data: Path
) -> None:
    spec = make_spec(tiny_chatml, sample_data / "preference", "dpo")
    report = inspect_data(spec, tiny_chatml, 2)
    assert [item["side"] for item in report] == ["chosen", "rejected", "chosen", "rejected"]
    chosen, rejected = report[0], report[1]
    assert chosen["where"] == rejected["where"]
    # The same prompt on both sides, ending with the generation prompt; nothing trained.
    assert chosen["segments"][0] == rejected["segments"][0]
    assert not chosen["segments"][0]["trained"]
    assert chosen["segments"][0]["text"].endswith("<|im_start|>assistant\n")
    # The reply and its <|im_end|>, and not the newline ChatML writes after it.
    record = json.loads((sample_data / "preference" / "train.jsonl").read_text().splitlines()[0])
    assert chosen["trained_spans"] == [record["chosen"][0]["content"] + "<|im_end|>"]
    assert rejected["trained_spans"] == [record["rejected"][0]["content"] + "<|im_end|>"]


def test_dpo_on_conversations_is_refused_before_anything_is_written(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    spec = make_spec(tiny_chatml, sample_data / "pirate", "dpo")
    with pytest.raises(InvalidInput) as error:
        train(spec, tiny_chatml, tmp_path / "out", ListSink())
    assert error.value.where.endswith("train.jsonl:1")
    assert "not a preference pair" in error.value.message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(300)
def test_dpo_stopped_midway_resumes_and_ends_like_an_uninterrupted_run(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from tuneship.common.errors import Unavailable

    spec = make_spec(tiny_chatml, sample_data / "preference", "dpo", save_steps=4)
    straight = train(spec, tiny_chatml, tmp_path / "straight", ListSink())

    steps = iter(range(1000))
    with pytest.raises(Unavailable, match="stopped at step 5"):
        train(spec, tiny_chatml, tmp_path / "resumed", ListSink(), stop=lambda: next(steps) >= 4)
    resumed = train(spec, tiny_chatml, tmp_path / "resumed", ListSink())

    def losses(out: Path) -> list[float]:
        return [
            json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
        ]

    assert len(losses(resumed.out)) == 12
    assert losses(resumed.out) == pytest.approx(losses(straight.out), rel=1e-5)
    a = load_file(straight.out / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed.out / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-5, name


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_dpo_on_a_real_gemma_model_raises_the_held_out_margin(
    settings, sample_data: Path, tmp_path: Path
) -> None:
    """The same DPO on Gemma 3 270M (a real pretrained chat model, from PyPI)."""
    from tuneship.testing.realmodels import real_model

    base = real_model("gemma3-270m", settings.cache_dir / "real-models")
    data = sample_data / "preference"
    spec = make_spec(base, data, "dpo", max_steps=6, learning_rate=5e-4, save_steps=6)
    spec = spec.model_copy(update={"template": type(spec.template)(family="gemma")})
    result = train(spec, base, tmp_path / "gemma-dpo", ListSink())
    before, after = margins_before_and_after(base, result.out, data)
    print(f"Gemma 3 270M DPO held-out margin (nats): before {before:.3f}, after {after:.3f}")
    assert after - before > 1.0
    assert result.manifest["metrics"]["eval_reward_accuracy"] >= 0.75
