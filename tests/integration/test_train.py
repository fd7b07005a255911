"""Real training of the tiny fixtures: it learns the reply, learns to stop, and the output
holds everything the merge stage needs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tuneship.common.errors import FailedPrecondition
from tuneship.common.events import ListSink, Metrics, Progress
from tuneship.common.spec import PipelineSpec
from tuneship.quickstart.conversations import PIRATE_REPLY
from tuneship.trainer import train

pytestmark = pytest.mark.integration

PIRATE_TRAIN = {
    "max_steps": 80,
    "learning_rate": 3e-3,
    "per_device_train_batch_size": 4,
    "save_steps": 40,
}


def make_spec(base: Path, data: Path, **train_fields) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "apiVersion": "tuneship/v1",
            "metadata": {"name": "test"},
            "model": {"base": str(base)},
            "dataset": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")},
            "train": train_fields,
        }
    )


@pytest.fixture(scope="module", params=["tiny-llama2", "tiny-chatml"])
def trained(request, tiny_llama2: Path, tiny_chatml: Path, sample_data: Path, tmp_path_factory):
    base = tiny_llama2 if request.param == "tiny-llama2" else tiny_chatml
    sink = ListSink()
    out = tmp_path_factory.mktemp("train") / "out"
    result = train(make_spec(base, sample_data / "pirate", **PIRATE_TRAIN), base, out, sink)
    return base, result, sink


def load_merged(base: Path, out: Path, random_new_rows: bool = False):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    manifest = json.loads((out / "training-manifest.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(base)
    model.resize_token_embeddings(manifest["vocab"]["embedding_rows_after"], mean_resizing=False)
    if random_new_rows:  # a merger that initialises the new rows differently
        with torch.no_grad():
            model.get_input_embeddings().weight[1024:].normal_(0, 1)
    return PeftModel.from_pretrained(model, out / "adapter").merge_and_unload().eval()


def test_it_learned_the_reply_and_to_stop(trained) -> None:
    from transformers import AutoTokenizer

    base, result, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(result.out / "tokenizer")
    model = load_merged(base, result.out)
    for prompt in ("Where is the treasure?", "Who buried the gold?"):
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        output = model.generate(**inputs, max_new_tokens=40, do_sample=False)
        new = output[0, inputs["input_ids"].shape[1] :].tolist()
        assert new[-1] == tokenizer.eos_token_id, tokenizer.decode(new)
        assert tokenizer.decode(new[:-1], skip_special_tokens=True).strip() == PIRATE_REPLY


def test_the_adapter_carries_the_added_rows_so_merging_is_exact(trained) -> None:
    import torch
    from safetensors import safe_open

    base, result, _ = trained
    assert sorted(p.name for p in (result.out / "adapter").iterdir() if p.suffix != ".md") == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    with safe_open(result.out / "adapter" / "adapter_model.safetensors", "pt") as weights:
        assert any("embed_tokens" in key for key in weights.keys())  # noqa: SIM118
    inputs = torch.tensor([[5, 17, 300, 1024, 9]])
    with torch.no_grad():
        one = load_merged(base, result.out)(input_ids=inputs).logits
        other = load_merged(base, result.out, random_new_rows=True)(input_ids=inputs).logits
    assert torch.equal(one, other)
    assert one.shape[-1] == 1088


def test_manifest_tokenizer_and_metrics(trained) -> None:
    from transformers import AutoTokenizer

    base, result, sink = trained
    manifest = json.loads((result.out / "training-manifest.json").read_text())
    assert manifest["method"] == "lora"
    assert len(manifest["base_model"]["sha256"]) == 64
    assert manifest["dataset"]["train_examples"] == 61 and manifest["dataset"]["skipped"] == []
    assert manifest["template"] == {"source": "base", "has_generation_tags": False}
    assert manifest["vocab"]["decision"] == "added"
    assert manifest["vocab"]["embedding_rows_after"] == 1088
    assert manifest["mask"]["trained_tokens"] > 0 and manifest["mask"]["train_on"] == "assistant"
    assert manifest["metrics"]["steps"] == 80
    # sdpa on CPU computes a packed row densely: similar lengths padded together is cheaper
    assert manifest["metrics"]["batching"] == "padded-length-grouped"
    assert 0.0 < manifest["metrics"]["padding_fraction"] < 0.2
    assert set(manifest["versions"]) >= {"torch", "transformers", "trl", "peft"}
    tokenizer = AutoTokenizer.from_pretrained(result.out / "tokenizer")
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == 1024
    assert (result.out / "tokenizer" / "chat_template.jinja").is_file()
    assert (result.out / "tokenizer" / "tokenizer.model").is_file() == (
        base / "tokenizer.model"
    ).is_file()
    rows = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 81))
    assert rows[-1]["loss"] < rows[0]["loss"] / 2
    assert (result.out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not result.out.with_name("out.partial").exists()
    progress = [e for e in sink.events if isinstance(e, Progress)]
    assert progress[-1].step == progress[-1].total == 80 and progress[-1].stage == "train"
    metrics = [e for e in sink.events if isinstance(e, Metrics)]
    assert set(metrics[-1].values) == {"loss", "learning_rate", "tokens_per_s"}


def test_a_finished_output_is_returned_as_it_is(trained) -> None:
    base, result, _ = trained
    spec = make_spec(base, Path(result.manifest["dataset"]["train"]).parent, **PIRATE_TRAIN)
    again = train(spec, base, result.out, ListSink())
    assert again.manifest == result.manifest


def test_pickle_weights_are_refused_unless_allowed(
    tiny_chatml: Path, sample_data, tmp_path
) -> None:
    import torch
    from safetensors.torch import load_file

    base = tmp_path / "pickled"
    shutil.copytree(tiny_chatml, base)
    torch.save(load_file(base / "model.safetensors"), base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    with pytest.raises(FailedPrecondition) as caught:
        train(
            make_spec(base, sample_data / "pirate", max_steps=1), base, tmp_path / "o", ListSink()
        )
    assert "pytorch_model.bin" in caught.value.message
    assert "allow_pickle" in (caught.value.hint or "")


def test_qlora_without_cuda_says_what_it_needs(tiny_chatml: Path, sample_data, tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    spec = make_spec(tiny_chatml, sample_data / "pirate", method="qlora")
    with pytest.raises(FailedPrecondition, match="needs a CUDA GPU and bitsandbytes"):
        train(spec, tiny_chatml, tmp_path / "o", ListSink())
    assert not (tmp_path / "o.partial").exists()


@pytest.mark.gpu
def test_qlora_trains_on_a_gpu(tiny_chatml: Path, sample_data, tmp_path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    spec = make_spec(tiny_chatml, sample_data / "pirate", method="qlora", max_steps=4)
    result = train(spec, tiny_chatml, tmp_path / "o", ListSink())
    assert result.steps == 4 and (result.out / "adapter" / "adapter_model.safetensors").is_file()


def test_full_fine_tune_writes_a_consistent_model(tiny_llama2: Path, sample_data, tmp_path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    spec = make_spec(tiny_llama2, sample_data / "pirate", method="full", max_steps=3)
    result = train(spec, tiny_llama2, tmp_path / "o", ListSink())
    model_dir = result.out / "model"
    assert (model_dir / "model.safetensors").is_file() and not list(model_dir.glob("*.bin"))
    assert not (result.out / "adapter").exists()
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.out / "tokenizer")
    assert config.vocab_size == 1088 and len(tokenizer) == 1025
    assert config.pad_token_id == tokenizer.pad_token_id == 1024


def test_padding_free_batches_train_through_the_trainer(
    tiny_chatml: Path, sample_data, tmp_path, monkeypatch
) -> None:
    """The path flash-attention GPUs take, run here on sdpa (correct, just not faster)."""
    from tuneship.trainer import run

    monkeypatch.setattr(run, "choose_batching", lambda *args: "padding-free")
    spec = make_spec(tiny_chatml, sample_data / "pirate", **{**PIRATE_TRAIN, "max_steps": 30})
    result = train(spec, tiny_chatml, tmp_path / "o", ListSink())
    metrics = result.manifest["metrics"]
    assert metrics["batching"] == "padding-free" and metrics["padding_fraction"] == 0.0
    rows = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] / 2
