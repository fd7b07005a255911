"""Operators' logs: a real ``tuneship serve controller`` process with JSON logs drives a
pipeline on scripted stage workers (real gRPC, in this process, JSON logs too). Every
line on both sides is one JSON object; the lines about a stage carry its pipeline id,
stage, attempt and task id; no secret the processes were given appears anywhere."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tuneship.client import PipelineClient
from tuneship.common.llama_server import free_port
from tuneship.common.logs import configure_logging
from tuneship.common.stages import STAGES
from tuneship.common.wire import StageServicer, stage_service
from tuneship.testing.stages import ScriptedStage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
TUNESHIP = str(Path(sys.executable).parent / "tuneship")
SECRETS = {"TUNESHIP_S3_SECRET_KEY": "s3-secret-0d9c71", "TUNESHIP_S3_ACCESS_KEY": "ak-55e2a0"}
IDS = ("pipeline_id", "stage", "attempt", "task_id")


def parse(text: str, side: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, f"the {side} logged nothing"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{side}: not a JSON line: {line!r}")
        assert {"time", "level", "logger", "message"} <= set(parsed[-1]), line
    return parsed


def test_json_logs_carry_the_task_ids_and_no_secrets(tmp_path: Path) -> None:
    worker_log = io.StringIO()
    handler = configure_logging("json", "info", SECRETS.values(), stream=worker_log)
    # Merge fails once (retried), so a stage has attempts 1 and 2.
    stages = {name: ScriptedStage(name, failures={1: "Unavailable"} if name == "merge" else {})
              for name in STAGES}  # fmt: skip
    servers = [stage_service(StageServicer(n, stages[n], keepalive_s=0.5)).start() for n in STAGES]
    base, data = tmp_path / "base", tmp_path / "train.jsonl"
    base.mkdir()
    (base / "config.json").write_text("{}")
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    port = free_port()
    env = {
        **os.environ, **SECRETS,
        "TUNESHIP_LOG_FORMAT": "json", "TUNESHIP_LOG_LEVEL": "debug",
        "TUNESHIP_STORE": f"local:{tmp_path / 'store'}",
        "TUNESHIP_DATA_DIR": str(tmp_path / "controller"), "TUNESHIP_METRICS_PORT": "",
        "TUNESHIP_WORKERS": ",".join(f"{n}=127.0.0.1:{s.port}" for n, s in zip(
            STAGES, servers, strict=True)),
        "TUNESHIP_RETRY_BACKOFF_S": "0.1", "TUNESHIP_STROE": "typo",
    }  # fmt: skip
    stderr = tmp_path / "controller.log"
    with stderr.open("w") as sink:
        process = subprocess.Popen(
            [TUNESHIP, "serve", "controller", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stderr=sink, stdout=sink,
        )  # fmt: skip
    try:
        client = PipelineClient(f"127.0.0.1:{port}")
        spec = (f"apiVersion: tuneship/v1\nmetadata: {{name: logs}}\nmodel: {{base: {base}}}\n"
                f"dataset: {{train: {data}}}\n")  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                info = client.submit(spec)
                break
            except Exception:
                assert process.poll() is None, stderr.read_text()
                assert time.monotonic() < deadline, stderr.read_text()
                time.sleep(0.2)
        while client.get(info.id).phase not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.1)
        assert client.get(info.id).phase == "succeeded"
    finally:
        process.terminate()
        process.wait(timeout=20)
        for server in servers:
            server.stop(0)
        handler.close()
        __import__("logging").getLogger().removeHandler(handler)
    controller_text, worker_text = stderr.read_text(), worker_log.getvalue()
    for secret in SECRETS.values():
        assert secret not in controller_text and secret not in worker_text
    controller = parse(controller_text, "controller")
    workers = parse(worker_text, "workers")
    assert any("TUNESHIP_STROE" in line["message"] for line in controller)  # warned, as JSON
    merge = [line for line in controller if line.get("stage") == "merge"]
    assert {line["message"] for line in merge} >= {"merge started (attempt 1)",
                                                   "merge started (attempt 2)"}  # fmt: skip
    for line in merge:
        assert line["pipeline_id"] == info.id
        if "attempt" in line:
            assert line["task_id"] == f"{info.id}.merge.{line['attempt']}"
    started = [line for line in merge if line["message"].startswith("merge started")]
    assert all(set(IDS) <= set(line) for line in started)
    failed = [line for line in merge if "failed" in line["message"]]
    assert failed and failed[0]["level"] == "warning" and set(IDS) <= set(failed[0])
    for name in STAGES:  # each worker's task lines, start to end, name their task
        ran = [line for line in workers if line.get("stage") == name]
        assert {"task started", "task succeeded"} <= {line["message"] for line in ran}, name
        for line in ran:
            assert set(IDS) <= set(line), line
            assert line["task_id"] == f"{info.id}.{name}.{line['attempt']}"
