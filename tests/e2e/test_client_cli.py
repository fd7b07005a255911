"""The controller client commands as a user types them, against a live controller."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuneship.common.stages import STAGES
from tuneship.testing.cluster import Cluster, start_cluster
from tuneship.testing.stages import ScriptedStage
from tuneship.v1 import pipeline_pb2

pytestmark = pytest.mark.e2e
TUNESHIP = str(Path(sys.executable).parent / "tuneship")
SPEC = """apiVersion: tuneship/v1
metadata: {{name: {name}}}
model: {{base: "store:inputs/model/x/manifest.json"}}
dataset: {{train: "store:inputs/dataset/y/manifest.json"}}
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    stages = {name: ScriptedStage(name) for name in STAGES}
    stages["train"] = ScriptedStage("train", steps=200, step_s=0.02)
    running = start_cluster(tmp_path, stages, capacity={})
    yield running
    running.stop()


def cli(cluster: Cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TUNESHIP, *args, "--controller", cluster.controller.address],
        capture_output=True, text=True, timeout=120, input=stdin,
        env={"COLUMNS": "200", "PATH": "", "TUNESHIP_STORE": "local:/nonexistent"},
    )  # fmt: skip


def test_submit_watch_get_list_logs_chat(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "one.yaml"
    spec.write_text(SPEC.format(name="cli-one"))
    submitted = cli(cluster, "submit", str(spec), "--json")
    assert submitted.returncode == 0, submitted.stderr
    pid = json.loads(submitted.stdout)["id"]
    watched = cli(cluster, "watch", pid)
    assert watched.returncode == 0 and "pipeline succeeded" in watched.stdout
    got = json.loads(cli(cluster, "get", pid, "--json").stdout)
    assert got["phase"] == "succeeded"
    assert [s["name"] for s in got["stages"]] == list(STAGES)
    listed = json.loads(cli(cluster, "list", "--json", "--phase", "succeeded").stdout)
    assert pid in [p["id"] for p in listed["pipelines"]]
    logs = cli(cluster, "logs", pid).stdout
    assert "train started (attempt 1)" in logs and "publish succeeded" in logs
    chat = cli(cluster, "chat", pid, stdin="ahoy\n/bye\n")
    assert chat.returncode == 0, chat.stderr
    assert f"{pid}:latest heard ahoy" in chat.stdout


def test_cancel_retry_and_errors(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "two.yaml"
    spec.write_text(SPEC.format(name="cli-two"))
    pid = cli(cluster, "submit", str(spec)).stdout.split("\t")[0]
    cluster.wait(pid, pipeline_pb2.RUNNING)
    cancelled = cli(cluster, "cancel", pid)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    retried = cli(cluster, "retry", pid, "--json")
    assert json.loads(retried.stdout)["phase"] in ("pending", "running")
    assert cli(cluster, "watch", pid).returncode == 0
    missing = cli(cluster, "get", "no-such-pipeline")
    assert missing.returncode == 2 and "no pipeline 'no-such-pipeline'" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: tuneship/v1\nmetadata: {name: x}\nmodel: {}\n")
    refused = cli(cluster, "submit", str(bad))
    assert refused.returncode == 2
    assert "bad.yaml:3: model.base" in refused.stderr and "dataset" in refused.stderr


def test_unreachable_controller_says_how_to_fix(tmp_path: Path) -> None:
    done = subprocess.run(
        [TUNESHIP, "list", "--controller", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 2
    assert "not reachable" in done.stderr and "--controller" in done.stderr
