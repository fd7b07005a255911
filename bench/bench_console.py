"""Web console benchmark: page loads and live-update latency with 1,000 pipelines.

A controller (in this process, SQLite, real gRPC) with scripted stage workers that
finish at once holds ``BENCH_PIPELINES`` (1,000) succeeded pipelines, in batches of 100
labelled ``batch=b<N>``; the console runs in front of it on loopback and is read with a
plain HTTP client after logging in, as a browser without scripts would.

- *Page load*: the time to the last byte of ``/`` (the list page: it reads at most 500
  pipelines in pages of 100, groups them, renders), of ``/pipelines/rows?labels=...``
  (what the list's auto-refresh fetches, one batch), of ``/?q=...`` (a search: reads up
  to 500) and of ``/pipelines/ID`` (a finished pipeline: its stages and its replayed
  events for the chart). ``BENCH_LOADS`` (20) loads of each; p50, p95, max.
- *Live-update latency*: one more pipeline whose training writes a log line with its
  clock reading every 50 ms for ``BENCH_LIVE_S`` (5) seconds; the delay from that
  reading to the line arriving at the reader of ``/pipelines/ID/events`` (worker ->
  controller -> Watch -> console -> server-sent event), same clock, same process.

Writes ``bench/results/console.json`` (``BENCH_OUT`` elsewhere).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tuneship.common.events import EventSink, Log, Progress
from tuneship.common.jobs import StageJob, StageOutcome
from tuneship.testing.console import TOKEN, ConsoleUser, console_stages, start_rig
from tuneship.testing.stages import ScriptedStage
from tuneship.v1 import pipeline_pb2

RESULTS = Path(os.environ.get("BENCH_OUT", Path(__file__).parent / "results" / "console.json"))
PIPELINES = int(os.environ.get("BENCH_PIPELINES", "1000"))
LOADS = int(os.environ.get("BENCH_LOADS", "20"))
LIVE_S = float(os.environ.get("BENCH_LIVE_S", "5"))
BATCH = 100
SPEC = """apiVersion: tuneship/v1
metadata: {{name: bench-{n}, labels: {{batch: b{batch}}}}}
model: {{base: s3://models/tiny}}
dataset: {{train: s3://data/train.jsonl}}
"""


class ClockedTraining(ScriptedStage):
    """A training that logs ``clock=<time.time()>`` every 50 ms for ``LIVE_S`` seconds
    when its pipeline is the live one; at once otherwise."""

    def _work(self, job: StageJob, sink: EventSink) -> StageOutcome:
        if "live" in job.pipeline:
            until = time.time() + LIVE_S
            step = 0
            while time.time() < until:
                step += 1
                sink.emit(Log(self.name, f"clock={time.time():.6f}"))
                sink.emit(Progress(self.name, step, int(LIVE_S * 20)))
                time.sleep(0.05)
        return super()._work(job, sink)


def succeeded(stub: Any) -> int:
    count, token = 0, ""
    while True:
        request = pipeline_pb2.ListRequest(phase=pipeline_pb2.SUCCEEDED, page_size=500,
                                           page_token=token)  # fmt: skip
        answer = stub.List(request)
        count += len(answer.pipelines)
        token = answer.next_page_token
        if not token:
            return count


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p95_ms": round(at(0.95) * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1),
            "samples": len(ordered)}  # fmt: skip


def timed_loads(user: ConsoleUser, path: str) -> dict[str, float]:
    times = []
    for _ in range(LOADS):
        started = time.perf_counter()
        answer = user.http.get(path)
        times.append(time.perf_counter() - started)
        assert answer.status_code == 200, (path, answer.status_code)
    return {**percentiles(times), "bytes": len(answer.content)}


def live_latency(user: ConsoleUser, pipeline_id: str) -> dict[str, float]:
    delays: list[float] = []
    with user.http.stream("GET", f"/pipelines/{pipeline_id}/events", timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: ") and "clock=" in line:
                text = json.loads(line.removeprefix("data: "))["text"]
                delays.append(time.time() - float(text.removeprefix("clock=")))
            elif line.startswith("event: end"):
                break
    return percentiles(delays)


def main() -> None:
    stages = console_stages(train=ClockedTraining("train", steps=1, step_s=0))
    for stage in stages.values():
        stage.steps, stage.step_s = 1, 0.0
    with tempfile.TemporaryDirectory() as temp:
        rig = start_rig(Path(temp), stages)
        try:
            stub = rig.cluster.stub
            load_at_start = os.getloadavg()
            started = time.perf_counter()
            for first in range(0, PIPELINES, BATCH):
                batch = first // BATCH
                requests = [pipeline_pb2.SubmitRequest(spec_yaml=SPEC.format(n=n, batch=batch))
                            for n in range(first, min(first + BATCH, PIPELINES))]  # fmt: skip
                stub.SubmitBatch(pipeline_pb2.SubmitBatchRequest(pipelines=requests))
            ids = [p.id for p in stub.List(pipeline_pb2.ListRequest(page_size=1)).pipelines]
            deadline = time.monotonic() + 1800
            while time.monotonic() < deadline and succeeded(stub) < PIPELINES:
                time.sleep(1)
            filled_s = time.perf_counter() - started
            user = ConsoleUser(rig.url)
            user.login(TOKEN.reveal())
            pages = {
                "list": timed_loads(user, "/"),
                "list_rows_one_batch": timed_loads(user, "/pipelines/rows?labels=batch%3Db3"),
                "search": timed_loads(user, "/?q=bench-99"),
                "pipeline": timed_loads(user, f"/pipelines/{ids[0]}"),
            }
            live = stub.Submit(pipeline_pb2.SubmitRequest(
                spec_yaml=SPEC.format(n="live", batch="live"))).id  # fmt: skip
            result: dict[str, Any] = {
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(),
                            "load_average_at_start": [round(x, 2) for x in load_at_start]},
                "load": {"pipelines": PIPELINES, "batches_of": BATCH, "loads_each": LOADS,
                         "seconds_to_fill": round(filled_s, 1),
                         "controller": "in the bench process, SQLite, real gRPC on loopback"},
                "page_load": pages,
                "live_update": live_latency(user, live),
            }  # fmt: skip
            user.close()
        finally:
            rig.stop()
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
