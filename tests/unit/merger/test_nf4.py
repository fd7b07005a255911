"""QLoRA adapters are merged onto the NF4-rounded weights they were trained against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.events import ListSink
from tuneship.common.spec import PipelineSpec
from tuneship.merger import merge
from tuneship.merger.nf4 import NF4_CODES, nf4_round_trip, round_trip_linear_layers
from tuneship.testing.adapters import build_train_out

pytestmark = pytest.mark.unit


def test_round_trip_keeps_16_levels_per_block_and_the_block_maximum() -> None:
    import torch

    weight = torch.randn(8, 128, generator=torch.Generator().manual_seed(0))
    restored = nf4_round_trip(weight)
    for block, original in zip(restored.reshape(-1, 64), weight.reshape(-1, 64), strict=True):
        absmax = original.abs().max()
        assert torch.isclose(block.abs().max(), absmax)
        levels = {round(float(v / absmax), 5) for v in block}
        assert levels <= {round(c, 5) for c in NF4_CODES}
    assert 0 < (restored - weight).abs().mean() < 0.1 * weight.abs().mean()


def spec(qlora_base: str) -> PipelineSpec:
    return PipelineSpec.model_validate({
        "apiVersion": "tuneship/v1", "metadata": {"name": "q"}, "model": {"base": "b"},
        "dataset": {"train": "t"}, "merge": {"dtype": "float32", "qlora_base": qlora_base},
    })  # fmt: skip


def test_dequantized_merge_reproduces_what_qlora_training_computed(
    tiny_llama2: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train_out = build_train_out(tiny_llama2, tmp_path / "train_out", add_pad=False)
    manifest = train_out / "training-manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "method": "qlora"}))
    trained_on = AutoModelForCausalLM.from_pretrained(tiny_llama2, dtype=torch.float32)
    round_trip_linear_layers(trained_on)
    reference = PeftModel.from_pretrained(trained_on, train_out / "adapter").eval()
    ids = torch.tensor([[1, 50, 300, 700, 900, 17]])
    errors = {}
    for base_choice in ("dequantized", "original"):
        sink = ListSink()
        result = merge(spec(base_choice), tiny_llama2, train_out, tmp_path / base_choice, sink)
        expected_note = "rounded through NF4" if base_choice == "dequantized" else "original"
        assert expected_note in " ".join(result.notes)
        model = AutoModelForCausalLM.from_pretrained(result.out, dtype=torch.float32)
        with torch.no_grad():
            errors[base_choice] = float((model(ids).logits - reference(input_ids=ids).logits)
                                        .abs().max())  # fmt: skip
    assert errors["dequantized"] < 1e-3
    assert errors["original"] > 100 * errors["dequantized"], errors
    print(f"max |logit error| vs the QLoRA training computation: {errors}")
