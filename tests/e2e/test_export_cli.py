"""``tuneship merge | convert | quantize | evaluate | doctor`` driven like a user."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tuneship.testing.adapters import build_train_out

pytestmark = pytest.mark.e2e

TUNESHIP = str(Path(sys.executable).parent / "tuneship")


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([TUNESHIP, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_merge_convert_quantize_evaluate_doctor(
    tiny_llama2: Path, sample_data: Path, tmp_path: Path
) -> None:
    train_out = build_train_out(tiny_llama2, tmp_path / "train_out", train_steps=10)
    merged, gguf, quants, report = (tmp_path / n for n in ("merged", "m.gguf", "q", "report"))

    done = run(["merge", str(tiny_llama2), str(train_out), str(merged), "--dtype", "bfloat16"])
    assert done.returncode == 0, done.stderr
    assert "1025 tokens = 1025 embedding rows (merged had 1088)" in done.stdout
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"

    done = run(["doctor", str(merged)])
    assert done.returncode == 0, done.stdout
    assert "training-only" in done.stdout  # the merged template keeps the training tags

    done = run(["convert", str(merged), str(gguf), "--outtype", "f16", "--name", "pirate"])
    assert done.returncode == 0, done.stderr
    assert "generation tags removed" in done.stdout and "convert 100/100 % writing" in done.stdout

    done = run(["quantize", str(gguf), str(quants), "-t", "iq3_xxs"])
    assert done.returncode == 2 and "importance matrix" in done.stderr

    eval_data = str(sample_data / "pirate" / "eval.jsonl")
    done = run(["quantize", str(gguf), str(quants), "-t", "q4_k_m", "-t", "iq3_xxs",
                "--data", eval_data, "--model", str(merged)])  # fmt: skip
    assert done.returncode == 0, done.stderr
    q4, iq3 = quants / "m-q4_k_m.gguf", quants / "m-iq3_xxs.gguf"
    assert q4.is_file() and iq3.is_file()

    done = run(["evaluate", str(gguf), str(q4), str(iq3), "--model", str(merged),
                "--data", eval_data, "--out", str(report)])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "recommended:" in done.stdout
    data = json.loads((report / "report.json").read_text())
    assert {r["quant_type"] for r in data["rows"]} == {"baseline", "m-q4_k_m", "m-iq3_xxs"}
    assert all(r["verified"] for r in data["rows"])

    done = run(["doctor", str(q4)])
    assert done.returncode == 0 and "1025 tokens = 1025 token_embd rows" in done.stdout

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: tuneship/v1\nmetadata: {name: pirate}\nmodel: {base: unused}\n"
        f"dataset: {{train: {sample_data / 'pirate' / 'train.jsonl'}, eval: {eval_data}}}\n"
        "export: {quant_types: [q4_k_m, iq4_xs], max_kld: 0.5}\n"
    )
    done = run(["export", str(merged), str(tmp_path / "export"), "--spec", str(spec)])
    assert done.returncode == 0, done.stderr
    assert "recommended:" in done.stdout
    names = {p.name for p in (tmp_path / "export").iterdir()}
    assert {"pirate-f16.gguf", "pirate-q4_k_m.gguf", "pirate-iq4_xs.gguf", "report.md"} <= names


def test_doctor_fix_then_convert_the_added_pad_token_failure(
    tiny_llama2: Path, tmp_path: Path
) -> None:
    import shutil

    from transformers import AutoTokenizer

    model = tmp_path / "seed"
    shutil.copytree(tiny_llama2, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.save_pretrained(model)

    done = run(["doctor", str(model)])
    assert done.returncode == 2  # a model that fails a check is bad input
    assert "the tokenizer has 1025 tokens but the embedding has 1024 rows" in done.stdout
    assert "tuneship doctor --fix PATH" in done.stdout

    done = run(["convert", str(model), str(tmp_path / "seed.gguf")])
    assert done.returncode == 2 and "cannot be converted" in done.stderr

    done = run(["doctor", str(model), "--fix"])
    assert done.returncode == 0, done.stdout
    assert "fixed: resized embedding and lm_head from 1024 to 1025 rows" in done.stdout

    done = run(["convert", str(model), str(tmp_path / "seed.gguf")])
    assert done.returncode == 0, done.stderr
    done = run(["doctor", str(tmp_path / "seed.gguf")])
    assert done.returncode == 0 and "1025 tokens = 1025 token_embd rows" in done.stdout
