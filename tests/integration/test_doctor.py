"""The classic added-pad-token failure (32001 tokens on 32000 rows), recreated:
doctor names it, --fix repairs it, the model then loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tuneship.common.chat import has_training_tags
from tuneship.common.errors import FailedPrecondition
from tuneship.common.events import ListSink
from tuneship.common.llama_server import LlamaServer
from tuneship.common.toolchain import Toolchain
from tuneship.converter import check_gguf, check_hf, convert, fix_hf
from tuneship.testing.adapters import add_generation_tags

pytestmark = pytest.mark.integration


def convert_to_gguf(toolchain: Toolchain, model: Path, out: Path) -> Path:
    """The pinned converter run bare, without tuneship's checks and template cleaning."""
    import subprocess

    command = [*toolchain.convert_command(), str(model), "--outfile", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return out


def seed_failure(base: Path, out: Path) -> Path:
    """A tokenizer with an added <pad> saved beside embeddings that were not resized."""
    from transformers import AutoTokenizer

    shutil.copytree(base, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.save_pretrained(out)
    return out


def loads_and_answers(toolchain: Toolchain, gguf: Path, log: Path) -> str:
    with LlamaServer(toolchain.binary("llama-server"), gguf, log, context=256) as server:
        answer = server.chat([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
    assert answer["usage"]["completion_tokens"] >= 1
    return str(answer["choices"][0]["message"]["content"])


def test_doctor_names_both_numbers_and_the_fix(tiny_llama2: Path, tmp_path: Path) -> None:
    report = check_hf(seed_failure(tiny_llama2, tmp_path / "seed"))
    vocab = [f for f in report.errors if f.check == "vocab"]
    assert vocab, report.findings
    assert "1025 tokens" in vocab[0].message and "1024 rows" in vocab[0].message
    assert vocab[0].fixable and "--fix" in (vocab[0].fix or "") and "1025" in (vocab[0].fix or "")


def test_convert_refuses_before_running_the_converter(
    tiny_llama2: Path, toolchain: Toolchain, tmp_path: Path
) -> None:
    model = seed_failure(tiny_llama2, tmp_path / "seed")
    with pytest.raises(FailedPrecondition) as caught:
        convert(model, tmp_path / "seed.gguf", toolchain=toolchain, events=ListSink())
    assert "1025 tokens" in caught.value.message and "1024 rows" in caught.value.message
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".seed*"))


def test_fix_repairs_it_and_the_repaired_model_converts_and_loads(
    tiny_llama2: Path, toolchain: Toolchain, tmp_path: Path
) -> None:
    model = seed_failure(tiny_llama2, tmp_path / "seed")
    done, report = fix_hf(model)
    assert report.ok, report.errors
    assert any("1024 to 1025 rows" in line for line in done)
    assert report.facts["embedding_rows"] == report.facts["config_vocab_size"] == 1025
    result = convert(model, tmp_path / "seed.gguf", toolchain=toolchain, events=ListSink())
    gguf_report = check_gguf(result.gguf)
    assert gguf_report.ok and gguf_report.facts["n_tokens"] == 1025
    loads_and_answers(toolchain, result.gguf, tmp_path / "server.log")


def test_unfixed_conversion_is_refused_by_llama_cpp_the_way_the_notes_saw_it(
    tiny_llama2: Path, toolchain: Toolchain, tmp_path: Path
) -> None:
    """Without tuneship's checks the notes' error appears; doctor on the GGUF explains it."""
    import json

    model = seed_failure(tiny_llama2, tmp_path / "seed")
    config = json.loads((model / "config.json").read_text())
    config["vocab_size"] = 1025  # the notes' edit that got the old converter through
    (model / "config.json").write_text(json.dumps(config))
    gguf = convert_to_gguf(toolchain, model, tmp_path / "bad.gguf")
    report = check_gguf(gguf)
    assert any("1025 tokens" in f.message and "1024 rows" in f.message for f in report.errors)
    with pytest.raises(FailedPrecondition, match=r"wrong shape|could not load"):
        loads_and_answers(toolchain, gguf, tmp_path / "server.log")


def test_tokenizer_json_only_with_spare_rows_gets_placeholder_tokens(
    tiny_chatml: Path, toolchain: Toolchain, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "padded"
    shutil.copytree(tiny_chatml, model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.resize_token_embeddings(1088)
    model.save_pretrained(model_dir)
    report = check_hf(model_dir)
    assert any("1024 tokens" in f.message and "1088 rows" in f.message for f in report.errors)
    done, report = fix_hf(model_dir)
    assert report.ok and report.facts["tokenizer_size"] == 1088, done
    result = convert(model_dir, tmp_path / "padded.gguf", toolchain=toolchain, events=ListSink())
    loads_and_answers(toolchain, result.gguf, tmp_path / "server.log")


def test_training_tags_are_a_warning_in_hf_and_an_error_in_a_gguf(
    tiny_chatml: Path, toolchain: Toolchain, tmp_path: Path
) -> None:
    model_dir = tmp_path / "tagged"
    shutil.copytree(tiny_chatml, model_dir)
    template = model_dir / "chat_template.jinja"
    template.write_text(add_generation_tags(template.read_text()))
    hf = check_hf(model_dir)
    assert hf.ok and any(f.check == "chat_template" and f.fixable for f in hf.findings)
    gguf = check_gguf(convert_to_gguf(toolchain, model_dir, tmp_path / "tagged.gguf"))
    assert any(f.check == "chat_template" for f in gguf.errors)
    done, fixed = fix_hf(model_dir)
    assert not has_training_tags(template.read_text()) and done
    assert all(f.severity == "ok" for f in fixed.findings if f.check == "chat_template")


def test_gguf_without_merge_scores_is_flagged_and_tuneship_convert_restores_them(
    tiny_chatml: Path, tiny_chatml_gguf: Path, toolchain: Toolchain, tmp_path: Path
) -> None:
    plain = check_gguf(tiny_chatml_gguf)
    assert any("placeholder" in f.message for f in plain.findings if f.severity == "warning")
    ours = convert(tiny_chatml, tmp_path / "chatml.gguf", toolchain=toolchain, events=ListSink())
    report = check_gguf(ours.gguf)
    assert all(f.severity == "ok" for f in report.findings), report.findings
    assert report.facts["add_bos"] is False  # ChatML has no BOS; llama.cpp must not add one


def broken_copy(base: Path, out: Path) -> Path:
    shutil.copytree(base, out)
    return out


def test_doctor_finds_a_truncated_safetensors_file(tiny_chatml: Path, tmp_path: Path) -> None:
    model = broken_copy(tiny_chatml, tmp_path / "cut")
    [weights] = sorted(model.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # an interrupted copy
    report = check_hf(model)
    assert not report.ok
    [finding] = [f for f in report.errors if f.check == "weights"]
    assert f"{weights.name}: truncated: its tensors need {len(data):,} bytes" in finding.message
    assert f"the file has {len(data) // 2:,}" in finding.message


def test_doctor_names_an_unknown_architecture(tiny_chatml: Path, tmp_path: Path) -> None:
    import json

    model = broken_copy(tiny_chatml, tmp_path / "alien")
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "alien-transformer"
    (model / "config.json").write_text(json.dumps(config))
    report = check_hf(model)
    [finding] = [f for f in report.errors if f.check == "architecture"]
    assert "model_type 'alien-transformer' is unknown to transformers" in finding.message


def test_doctor_reports_missing_tokenizer_files_instead_of_crashing(
    tiny_chatml: Path, tmp_path: Path
) -> None:
    model = broken_copy(tiny_chatml, tmp_path / "notok")
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                 "special_tokens_map.json", "vocab.json", "merges.txt"):  # fmt: skip
        (model / name).unlink(missing_ok=True)
    report = check_hf(model)
    [finding] = [f for f in report.errors if f.check == "tokenizer"]
    assert "the tokenizer does not load" in finding.message
    assert "tokenizer.json" in (finding.fix or "")


def test_a_truncated_or_foreign_gguf_is_named_as_such(
    tiny_chatml_gguf: Path, tmp_path: Path
) -> None:
    from tuneship.common.errors import InvalidInput

    data = tiny_chatml_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(InvalidInput, match=r"the GGUF is truncated or damaged: [\d,]+ bytes"):
        check_gguf(cut)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInput, match=r"not a GGUF file: it is empty \(0 bytes\)"):
        check_gguf(empty)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"PK\x03\x04" + data[4:100])
    with pytest.raises(InvalidInput, match="starts with b'PK"):
        check_gguf(other)
