"""Trained adapter → merged → f16 GGUF → quantized GGUFs: all load, answer, match the template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.chat import has_training_tags
from tuneship.common.errors import FailedPrecondition
from tuneship.common.events import ListSink, Log, Progress
from tuneship.common.spec import PipelineSpec, parse_spec
from tuneship.common.toolchain import Toolchain
from tuneship.converter import ExportResult, convert, export, read_gguf, verify
from tuneship.merger import MergeResult, merge
from tuneship.testing.adapters import build_train_out

pytestmark = pytest.mark.integration

QUANTS = ["q4_k_m", "q5_k_m", "q8_0", "iq4_xs"]


def make_spec(data: Path, **export: object) -> PipelineSpec:
    body = {
        "apiVersion": "tuneship/v1",
        "metadata": {"name": "pirate"},
        "model": {"base": "unused"},
        "dataset": {"train": str(data / "train.jsonl"), "eval": str(data / "eval.jsonl")},
        "export": {"quant_types": QUANTS, **export},
    }
    return parse_spec(json.dumps(body))


@pytest.fixture(scope="module")
def merged(
    request: pytest.FixtureRequest, sample_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, MergeResult]:
    """Both fixtures with an added <pad> (rows padded to 64), trained a little, merged."""
    results = {}
    for name in ("tiny_llama2", "tiny_chatml"):
        work = tmp_path_factory.mktemp(name)
        base = request.getfixturevalue(name)
        train_out = build_train_out(base, work / "train_out", train_steps=20)
        spec = make_spec(sample_data / "pirate")
        results[name] = merge(spec, base, train_out, work / "merged", ListSink())
    return results


@pytest.fixture(scope="module")
def exported(
    merged: dict[str, MergeResult], sample_data: Path, toolchain: Toolchain, tmp_path_factory
) -> tuple[ExportResult, ListSink]:
    spec = make_spec(sample_data / "pirate")
    sink = ListSink()
    out = tmp_path_factory.mktemp("export") / "pirate"
    result = export(spec, merged["tiny_llama2"].out, out, sink, toolchain)
    return result, sink


@pytest.mark.parametrize("name", ["tiny_llama2", "tiny_chatml"])
def test_merge_leaves_tokens_config_and_rows_equal(
    name: str, merged: dict[str, MergeResult]
) -> None:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    result = merged[name]
    config = AutoConfig.from_pretrained(result.out)
    tokenizer = AutoTokenizer.from_pretrained(result.out)
    assert len(tokenizer) == config.vocab_size == result.vocab.rows_saved == 1025
    assert result.vocab.rows_merged == 1088  # the adapter's padded rows were loaded
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    generation = GenerationConfig.from_pretrained(result.out)
    assert (generation.eos_token_id, generation.pad_token_id) == (
        tokenizer.eos_token_id, tokenizer.pad_token_id,
    )  # fmt: skip
    assert str(config.dtype).endswith("float16")
    assert (result.out / "tokenizer.model").is_file() == (name == "tiny_llama2")
    assert (result.out / "merge-manifest.json") in result.files


def test_merged_model_computes_what_base_plus_adapter_computes(
    merged: dict[str, MergeResult], tiny_llama2: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train_out = build_train_out(tiny_llama2, tmp_path / "train_out", train_steps=20)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama2, dtype=torch.float32)
    base.resize_token_embeddings(1088, mean_resizing=False)
    reference = PeftModel.from_pretrained(base, train_out / "adapter").eval()
    mergedm = AutoModelForCausalLM.from_pretrained(merged["tiny_llama2"].out, dtype=torch.float32)
    ids = torch.tensor([[1, 50, 300, 700, 1024]])
    with torch.no_grad():
        want = reference(input_ids=ids).logits[..., :1025]
        got = mergedm(ids).logits
    assert torch.allclose(want, got, atol=2e-2), (want - got).abs().max()


def test_export_writes_every_type_verified_with_a_report(exported) -> None:
    result, sink = exported
    assert set(result.ggufs) == {"f16", *QUANTS}
    assert result.imatrix is not None and result.imatrix.is_file()
    rows = {r.quant_type: r for r in result.report.rows}
    assert all(r.verified for r in rows.values())
    assert rows["q8_0"].kld_mean < rows["q4_k_m"].kld_mean < 0.1
    assert (
        rows["f16"].bits_per_weight > rows["q8_0"].bits_per_weight > rows["q4_k_m"].bits_per_weight
    )
    assert result.report.recommended in QUANTS
    names = {p.name for p in result.files}
    assert {"report.json", "report.md", "report.png", "export-manifest.json"} <= names
    assert all(p.is_file() for p in result.files)
    assert not [p for p in result.out.iterdir() if p.name.startswith(".") or p.name == "scratch"]
    assert any(isinstance(e, Progress) and e.stage == "convert" for e in sink.events)
    assert any(isinstance(e, Log) and "recommended" in e.message for e in sink.events)


def test_report_perplexity_is_the_merged_models_on_the_same_chat_token_ids(
    exported, merged: dict[str, MergeResult], sample_data: Path
) -> None:
    """The f16 GGUF scored on the held-out chats' token ids (control tokens as single
    ids) gives the perplexity transformers gives the merged model on those ids."""
    from tuneship.common.conversations import read_conversations
    from tuneship.converter.evaluate import held_out_ids, hf_perplexity

    result, _ = exported
    model = merged["tiny_llama2"].out
    held_out = read_conversations(sample_data / "pirate" / "eval.jsonl")
    sequences = held_out_ids(model, held_out, context=256, max_tokens=2048)
    assert all(s[0] == 1 and 2 in s for s in sequences)  # <s> … </s> as single ids
    rows = {r.quant_type: r for r in result.report.rows}
    assert result.report.eval_tokens == sum(len(s) - 1 for s in sequences)
    assert rows["f16"].perplexity == pytest.approx(hf_perplexity(model, sequences), rel=0.02)
    assert rows["f16"].kld_mean == 0.0 and rows["q8_0"].same_top_p > 90


def test_exported_ggufs_carry_no_training_tags_and_lineage(exported) -> None:
    result, _ = exported
    for path in result.ggufs.values():
        info = read_gguf(path)
        assert info.chat_template and not has_training_tags(info.chat_template)
        assert info.n_tokens == info.embedding_rows == 1025
    f16 = read_gguf(result.baseline)
    assert f16.name == "pirate" and f16.metadata.get("general.finetune") == "lora"
    q4 = read_gguf(result.ggufs["q4_k_m"])
    assert "Q4_K" in q4.tensor_types


def test_chatml_tokenizer_json_only_converts_and_matches_hf_token_ids(
    merged: dict[str, MergeResult], sample_data: Path, toolchain: Toolchain, tmp_path: Path
) -> None:
    from tuneship.common.conversations import read_conversations

    gguf = convert(merged["tiny_chatml"].out, tmp_path / "chatml.gguf", toolchain=toolchain,
                   events=ListSink())  # fmt: skip
    assert gguf.template_stripped
    conversations = read_conversations(sample_data / "chat" / "eval.jsonl")
    result = verify(gguf.gguf, merged["tiny_chatml"].out, toolchain=toolchain,
                    events=ListSink(), work=tmp_path, conversations=conversations)  # fmt: skip
    assert result.parity_conversations >= 8 and result.generation_tokens_per_s > 0


def test_parity_mismatch_fails_with_a_readable_diff(
    merged: dict[str, MergeResult], toolchain: Toolchain, tmp_path: Path, tiny_chatml_gguf: Path
) -> None:
    # The foundation's plain conversion of tiny-chatml keeps llama.cpp's defaults (BOS
    # added, no merge scores): it must not pass for the tokenizer it came from.
    with pytest.raises(FailedPrecondition) as caught:
        verify(tiny_chatml_gguf, merged["tiny_chatml"].out, toolchain=toolchain,
               events=ListSink(), work=tmp_path)  # fmt: skip
    text = caught.value.message
    assert "template parity failed" in text and "first difference at token" in text
    assert "HF       :" in text and "llama.cpp:" in text


def test_iq_type_refused_when_imatrix_is_never(
    merged: dict[str, MergeResult], sample_data: Path, toolchain: Toolchain, tmp_path: Path
) -> None:
    spec = make_spec(sample_data / "pirate", imatrix="never")
    with pytest.raises(FailedPrecondition, match="importance matrix"):
        export(spec, merged["tiny_llama2"].out, tmp_path / "out", ListSink(), toolchain)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("outtype", ["bf16", "f32", "q8_0"])
def test_other_outtypes_convert_load_and_keep_parity(
    outtype: str, merged: dict[str, MergeResult], toolchain: Toolchain, tmp_path: Path
) -> None:
    model = merged["tiny_llama2"].out
    result = convert(model, tmp_path / f"m-{outtype}.gguf", toolchain=toolchain,
                     events=ListSink(), outtype=outtype)  # fmt: skip
    info = read_gguf(result.gguf)
    assert outtype.upper() in info.tensor_types
    verify(result.gguf, model, toolchain=toolchain, events=ListSink(), work=tmp_path)


# ChatML that refuses a system message, as the official Gemma 2 template does.
CHATML_NO_SYSTEM = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{ raise_exception('System role not supported') }}{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def with_template(model: Path, template: str, out: Path) -> Path:
    """A copy of ``model`` whose chat template is ``template``."""
    import shutil

    shutil.copytree(model, out)
    (out / "chat_template.jinja").write_text(template)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def test_a_template_that_refuses_system_messages_exports_conversations_without_one(
    merged: dict[str, MergeResult], sample_data: Path, toolchain: Toolchain, tmp_path: Path
) -> None:
    from tuneship.common.chat import ChatTemplateError

    model = with_template(merged["tiny_chatml"].out, CHATML_NO_SYSTEM, tmp_path / "model")
    lines = (sample_data / "pirate" / "train.jsonl").read_text().splitlines()
    plain = [line for line in lines if '"system"' not in line]
    (tmp_path / "train.jsonl").write_text("\n".join(plain[:-6]) + "\n")
    (tmp_path / "eval.jsonl").write_text("\n".join(plain[-6:]) + "\n")
    spec = make_spec(tmp_path, quant_types=["q8_0"], imatrix="never")
    result = export(spec, model, tmp_path / "out", ListSink(), toolchain)
    assert all(r.verified for r in result.report.rows)

    with_system = [line for line in lines if '"system"' in line]
    (tmp_path / "eval.jsonl").write_text("\n".join([*plain[-2:], with_system[0]]) + "\n")
    with pytest.raises(ChatTemplateError) as caught:
        export(spec, model, tmp_path / "out2", ListSink(), toolchain)
    assert caught.value.status == "INVALID_ARGUMENT"
    assert caught.value.where == f"{tmp_path / 'eval.jsonl'}:3"
    assert "System role not supported" in caught.value.message
    assert not (tmp_path / "out2").exists()


def test_a_gguf_llama_cpp_cannot_load_fails_the_evaluation_by_name(
    toolchain: Toolchain, tmp_path: Path
) -> None:
    from tuneship.converter.evaluate import baseline

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(FailedPrecondition) as caught:
        baseline(broken, [[1, 2, 3]], tmp_path / "base.npy", toolchain=toolchain)
    assert "evaluating broken.gguf in llama.cpp failed" in caught.value.message
    assert caught.value.where == str(broken)
    assert not list(tmp_path.glob("*.eval.json"))  # the request file is not left behind
