"""SFT, then DPO on its result, through to a served model: two `tuneship run`s on one
data directory, the second naming the first pipeline as its base (`pipeline:<id>`).

The SFT pipeline trains on the preference file's chosen replies (a preference file read
as conversations is prompt + chosen), the usual first step before DPO; DPO then
prefers those answers over the pirate reply, and the served result answers and stops
(the publish stage's smoke test)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
TUNESHIP = str(Path(sys.executable).parent / "tuneship")

SFT = """apiVersion: tuneship/v1
metadata: {{name: sft}}
model: {{base: {base}}}
dataset: {{train: {data}/preference/train.jsonl, eval: {data}/preference/eval.jsonl}}
train: {{max_steps: 80, learning_rate: 0.003}}
export: {{quant_types: [q8_0]}}
serve: {{smoke_prompts: []}}
"""

DPO = """apiVersion: tuneship/v1
metadata: {{name: dpo}}
model: {{base: "pipeline:{sft}"}}
dataset: {{train: {data}/preference/train.jsonl, eval: {data}/preference/eval.jsonl}}
train: {{objective: dpo, max_steps: 12, learning_rate: 0.001}}
export: {{quant_types: [q8_0]}}
serve: {{smoke_prompts: ["What is the capital of France?"]}}
"""


def run(spec: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "OLLAMA_HOST": "http://127.0.0.1:9"}
    argv = [TUNESHIP, "run", str(spec), "--data-dir", str(data_dir)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.timeout(1200)
def test_dpo_on_an_sft_pipeline_reaches_a_served_model(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    sft_spec, dpo_spec = tmp_path / "sft.yaml", tmp_path / "dpo.yaml"
    sft_spec.write_text(SFT.format(base=tiny_chatml, data=sample_data))
    sft = run(sft_spec, data_dir)
    assert sft.returncode == 0, sft.stdout[-3000:] + sft.stderr[-3000:]
    sft_id = re.search(r"pipeline (sft-\S+)", sft.stderr).group(1)

    dpo_spec.write_text(DPO.format(sft=sft_id, data=sample_data))
    dpo = run(dpo_spec, data_dir)
    assert dpo.returncode == 0, dpo.stdout[-3000:] + dpo.stderr[-3000:]
    assert "pipeline succeeded" in dpo.stdout
    assert "served as dpo" in dpo.stdout
    answer = re.search(r"model: (.*)", dpo.stdout)
    assert answer and answer.group(1).strip()  # the served model answered
    print("served DPO model:", answer.group(1))

    store = data_dir / "store"
    (manifest_path,) = store.glob("pipelines/dpo-*/stages/train/staging/*/training-manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["objective"] == "dpo" and manifest["metrics"]["eval_reward_margin"] > 0
    # The base was the SFT pipeline's merged model, copied into the inputs.
    (merged,) = store.glob(f"pipelines/{sft_id}/stages/merge/manifest.json")
    merged_files = {f["name"]: f["sha256"] for f in json.loads(merged.read_text())["files"]}
    inputs = [json.loads(p.read_text()) for p in store.glob("inputs/model/*/manifest.json")]
    copied = [{f["name"]: f["sha256"] for f in m["files"]} for m in inputs]
    assert merged_files in copied
