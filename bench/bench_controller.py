"""Controller benchmark: 1,000 pipelines against instant stage workers over real gRPC.

The controller is a real ``tuneship serve controller`` process (SQLite state); the four
stage services run in this process with scripted stages that finish at once
(``tuneship.testing.stages``), so what is measured is the controller: its scheduler,
its state store and its gRPC calls.

- stage transitions per second: stages that ran to success, over the wall time from
  the first Submit to the last pipeline succeeding;
- dispatch latency: from a stage becoming runnable (the pipeline created, or the stage
  before it recorded as succeeded) to the stage recorded as started, p50 and p99. With
  1,000 pipelines submitted at once and 64 attempts per stage allowed, this includes
  waiting for a free slot, not only the scheduler's own delay;
- the controller process's peak RSS, sampled every 50 ms.

Targets (issue 11): >= 200 transitions/s, p99 <= 50 ms, RSS <= 300 MB. PostgreSQL joins
this benchmark with the PostgreSQL test server. Writes ``bench/results/controller.json``.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from tuneship.client import PipelineClient
from tuneship.common.stages import STAGES
from tuneship.common.wire import StageServicer, stage_service
from tuneship.testing.kubecluster import free_port
from tuneship.testing.stages import ScriptedStage

RESULTS = Path(__file__).parent / "results" / "controller.json"
TUNESHIP = str(Path(sys.executable).parent / "tuneship")
PIPELINES = int(os.environ.get("BENCH_PIPELINES", "1000"))
BATCH = 100
CONCURRENCY = 64
SPEC = """apiVersion: tuneship/v1
metadata: {{name: bench-{n}}}
model: {{base: {base}}}
dataset: {{train: {data}}}
"""
CONVERSATION = {"messages": [{"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "hello"}]}  # fmt: skip


def inputs(root: Path) -> tuple[Path, Path]:
    """A stand-in base model and dataset: the scripted stages never read them, and the
    controller stores them once (content-addressed) for all pipelines."""
    base = root / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "llama"}')
    data = root / "train.jsonl"
    data.write_text(json.dumps(CONVERSATION) + "\n")
    return base, data


def start_workers() -> tuple[list[Any], dict[str, str]]:
    servers, addresses = [], {}
    for name in STAGES:
        stage = ScriptedStage(name, steps=0)
        servicer = StageServicer(name, stage, capacity=CONCURRENCY, keepalive_s=5.0)
        server = stage_service(servicer).start()
        servers.append(server)
        addresses[name] = server.address
    return servers, addresses


def watch_rss(pid: int, stop: threading.Event, peak: list[int]) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], process.memory_info().rss)
        except psutil.Error:
            return
        stop.wait(0.05)


def latencies(db: Path) -> list[float]:
    """Seconds from each stage becoming runnable to its start, from the event log."""
    rows = sqlite3.connect(db).execute(
        "select pipeline_id, time, stage, payload_json from events where kind = 'transition'"
        " order by pipeline_id, seq"
    )
    ready: dict[str, float] = {}
    found = []
    for pipeline, at, stage, payload in rows:
        message = json.loads(payload).get("message", "")
        if message == "submitted":
            ready[pipeline] = at
        elif message.startswith(f"{stage} started") and pipeline in ready:
            found.append(at - ready.pop(pipeline))
        elif message.startswith(f"{stage} succeeded"):
            ready[pipeline] = at
    return found


def count(client: PipelineClient, phase: str) -> int:
    total, token = 0, ""
    while True:
        page, token = client.list(phase=phase, page_size=500, page_token=token)
        total += len(page)
        if not token:
            return total


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    servers, addresses = start_workers()
    with tempfile.TemporaryDirectory() as temp:
        db = Path(temp) / "state.db"
        port = free_port()
        env = {
            **os.environ,
            "TUNESHIP_STATE_URL": f"sqlite:///{db}",
            "TUNESHIP_WORKERS": ",".join(f"{k}={v}" for k, v in addresses.items()),
            "TUNESHIP_LIMITS": ",".join(f"{s}={CONCURRENCY}" for s in STAGES),
            "TUNESHIP_STORE": f"local:{Path(temp) / 'store'}",
            "TUNESHIP_METRICS_PORT": "",
        }
        controller = subprocess.Popen(
            [TUNESHIP, "serve", "controller", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=temp,
        )  # fmt: skip
        stop, peak = threading.Event(), [0]
        threading.Thread(target=watch_rss, args=(controller.pid, stop, peak), daemon=True).start()
        client = PipelineClient(f"127.0.0.1:{port}", timeout_s=120)
        try:
            while True:
                try:
                    client.list(page_size=1)
                    break
                except Exception:
                    time.sleep(0.2)
            base, data = inputs(Path(temp))
            started = time.monotonic()
            ids = []
            for first in range(0, PIPELINES, BATCH):
                numbers = range(first, min(PIPELINES, first + BATCH))
                specs = [SPEC.format(n=n, base=base, data=data) for n in numbers]
                ids += [info.id for info in client.submit_batch(specs)]
            submitted = time.monotonic() - started
            while count(client, "succeeded") < PIPELINES:
                failed = client.list(phase="failed", page_size=10)[0]
                if failed:
                    raise SystemExit(f"a pipeline failed: {failed[0]}")
                time.sleep(0.5)
            wall = time.monotonic() - started
        finally:
            stop.set()
            controller.terminate()
            controller.wait(timeout=30)
            for server in servers:
                server.stop(0)
        waits = latencies(db)
    transitions = PIPELINES * len(STAGES)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "database": "sqlite",
        "pipelines": PIPELINES,
        "stage_transitions": transitions,
        "wall_s": round(wall, 2),
        "submit_s": round(submitted, 2),
        "transitions_per_s": round(transitions / wall, 1),
        "dispatch_latency_ms": {
            "samples": len(waits),
            "p50": round(statistics.median(waits) * 1000, 1),
            "p99": round(percentile(waits, 0.99) * 1000, 1),
            "max": round(max(waits) * 1000, 1),
        },
        "controller_peak_rss_mb": round(peak[0] / 2**20, 1),
        "targets": {"transitions_per_s": 200, "p99_ms": 50, "rss_mb": 300},
        "note": "PostgreSQL joins this benchmark when the suite has its test server.",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
