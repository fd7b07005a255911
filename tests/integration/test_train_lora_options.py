"""LoRA options on a real tiny model: DoRA trains and merges exactly; target_modules are
checked against the model's module names before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.errors import InvalidInput
from tuneship.common.events import ListSink
from tuneship.common.spec import PipelineSpec
from tuneship.merger.merge import merge
from tuneship.trainer import train

pytestmark = pytest.mark.integration


def make_spec(base: Path, data: Path, lora: dict, **merge_fields) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "apiVersion": "tuneship/v1",
            "metadata": {"name": "lora-options"},
            "model": {"base": str(base)},
            "dataset": {"train": str(data / "train.jsonl")},
            "train": {
                "max_steps": 6,
                "learning_rate": 1e-2,
                "per_device_train_batch_size": 4,
                "lora": lora,
            },
            "merge": merge_fields,
        }
    )


@pytest.mark.timeout(240)
def test_dora_trains_and_the_merged_model_equals_the_adapter(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lora = {"use_dora": True, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    spec = make_spec(tiny_chatml, sample_data / "pirate", lora, dtype="float32")
    result = train(spec, tiny_chatml, tmp_path / "train", ListSink())

    config = json.loads((result.out / "adapter" / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    assert set(config["target_modules"]) == {"q_proj", "v_proj", "down_proj"}
    weights = load_file(result.out / "adapter" / "adapter_model.safetensors")
    magnitudes = [name for name in weights if "lora_magnitude_vector" in name]
    assert len(magnitudes) == 3 * 2  # three targets in each of the two layers

    merged = merge(spec, tiny_chatml, result.out, tmp_path / "merged", ListSink())

    tokenizer = AutoTokenizer.from_pretrained(result.out / "tokenizer")
    batch = tokenizer(
        ["<|im_start|>user\nWhere is the treasure?<|im_end|>", "Who buried the gold?"],
        return_tensors="pt",
        padding=True,
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_chatml, dtype=torch.float32)
    base.resize_token_embeddings(result.manifest["vocab"]["embedding_rows_after"])
    adapter = PeftModel.from_pretrained(base, result.out / "adapter").eval()
    whole = AutoModelForCausalLM.from_pretrained(merged.out, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = adapter(**batch).logits
        got = whole(**batch).logits
        plain = adapter.get_base_model()
        with adapter.disable_adapter():
            untrained = plain(**batch).logits
    rows = min(expected.shape[-1], got.shape[-1])
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[..., :rows][mask], expected[..., :rows][mask])
    # The adapter changed the model: the equality above is not base == base.
    assert (expected[mask] - untrained[mask]).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("targets", "says"),
    [
        (["q_proj", "v_prj"], ["'v_prj'", "did you mean v_proj", "down_proj", "gate_proj"]),
        (r"model\.layers\.\d+\.attention\.q_proj", ["attention", "regular expression"]),
    ],
)
@pytest.mark.timeout(120)
def test_a_target_module_matching_nothing_is_refused_before_training(
    targets, says: list[str], tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    spec = make_spec(tiny_chatml, sample_data / "pirate", {"target_modules": targets})
    out = tmp_path / "out"
    with pytest.raises(InvalidInput) as caught:
        train(spec, tiny_chatml, out, ListSink())
    assert caught.value.where == "train.lora.target_modules"
    for text in says:
        assert text in str(caught.value)
    assert "lm_head" not in str(caught.value).split("linear layers:")[-1]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(120)
def test_peft_suffix_and_regex_targets_are_accepted(tiny_chatml: Path) -> None:
    from transformers import AutoModelForCausalLM
    from tuneship.common.spec.train import LoraSpec
    from tuneship.trainer.targets import check_target_modules

    model = AutoModelForCausalLM.from_pretrained(tiny_chatml)
    for targets in (
        ["self_attn.q_proj", "model.layers.0.mlp.up_proj"],
        r"model\.layers\.\d+\.self_attn\.(q|v)_proj",
        "ALL-LINEAR",
    ):
        check_target_modules(model, LoraSpec(target_modules=targets))
    # PEFT matches a whole dotted component: "proj" is no module's name.
    with pytest.raises(InvalidInput):
        check_target_modules(model, LoraSpec(target_modules=["proj"]))
