"""`tuneship run` as a user runs it (what `make run` does): offline, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tuneship.common.store import LocalStore
from tuneship.common.store.commit import verify_committed
from tuneship.testing.conversations import PIRATE_REPLY

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
