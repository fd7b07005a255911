"""`tuneship run` as a user runs it (what `make run` does): offline, end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tuneship.common.store import LocalStore
from tuneship.common.store.commit import verify_committed
from tuneship.quickstart.conversations import PIRATE_REPLY

pytestmark = pytest.mark.e2e
TUNESHIP = str(Path(sys.executable).parent / "tuneship")


def run_quickstart(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "OLLAMA_HOST": "http://127.0.0.1:9"}
    return subprocess.run(
        [TUNESHIP, "run", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip


def test_quickstart_trains_exports_serves_and_answers(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    done = run_quickstart(data_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "pipeline succeeded" in done.stdout
    assert f"model: {PIRATE_REPLY}" in done.stdout  # the trained reply, and it stopped
    assert "recommended:" in done.stdout and "served as quickstart-pirate:latest" in done.stdout

    store = LocalStore(data_dir / "store")
    committed = (data_dir / "store" / "pipelines").glob("*/stages/*/manifest.json")
    manifests = sorted(str(p.relative_to(data_dir / "store")) for p in committed)
    assert [m.split("/")[3] for m in manifests] == ["export", "merge", "publish", "train"]
    for key in manifests:
        manifest = verify_committed(store, key, deep=True)  # every file re-hashed
        assert manifest.files
    export = json.loads((data_dir / "store" / manifests[0]).read_text())
    names = {f["name"] for f in export["files"]}
    assert {"report.json", "report.md", "report.png"} <= names
    assert any(n.endswith("q4_k_m.gguf") for n in names) and any(
        n.endswith("q8_0.gguf") for n in names
    )

    again = run_quickstart(data_dir)  # same inputs: committed stages are reused
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for stage in ("train", "merge", "export"):
        assert f"{stage} succeeded (reused a committed result)" in again.stdout
    assert f"model: {PIRATE_REPLY}" in again.stdout


SMALL = """apiVersion: tuneship/v1
metadata: {{name: interrupted}}
model: {{base: {base}}}
dataset: {{train: {data}/train.jsonl, eval: {data}/eval.jsonl}}
train: {{max_steps: 30, save_steps: 5, learning_rate: 0.003}}
export: {{quant_types: [q8_0]}}
serve: {{smoke_prompts: []}}
"""


def test_a_killed_run_continues_where_it_stopped(
    tiny_chatml: Path, sample_data: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMALL.format(base=tiny_chatml, data=sample_data / "pirate"))
    data_dir = tmp_path / "data"
    argv = [TUNESHIP, "run", str(spec), "--data-dir", str(data_dir)]
    env = {**os.environ, "COLUMNS": "200", "OLLAMA_HOST": "http://127.0.0.1:9"}
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    checkpoints: list[Path] = []
    while not checkpoints and time.monotonic() < deadline and first.poll() is None:
        checkpoints = list((data_dir / "work").glob("*/train/out.partial/checkpoints/checkpoint-*"))
        time.sleep(0.2)
    assert checkpoints, "training never wrote a checkpoint"
    first.send_signal(signal.SIGKILL)
    first.wait()

    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming interrupted-" in again.stderr
    assert "pipeline succeeded" in again.stdout
    pipelines = list((data_dir / "store" / "pipelines").iterdir())
    assert len(pipelines) == 1  # the same pipeline finished; no second one was started
    manifest = json.loads(
        next(pipelines[0].glob("stages/train/staging/*/training-manifest.json")).read_text()
    )
    assert manifest["metrics"]["steps"] == 30
