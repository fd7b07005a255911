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
- *Download*: one more pipeline whose export commits a ``BENCH_DOWNLOAD_MB`` (256) MiB
  GGUF; MB/s of reading it from the store directly, through the controller's
  ``ReadArtifact`` and through the console's download link, interleaved, 3 times each
  (the best of each), and the console's rate as a ratio of the other two.

Every stage commits two small files to a directory store, so a pipeline's page also
lists its files (``ListArtifacts`` reads four manifests).

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

from tuneship.client import PipelineClient
from tuneship.common.events import EventSink, Log, Progress
from tuneship.common.jobs import StageJob, StageOutcome
from tuneship.common.stages import STAGES
from tuneship.common.store import LocalStore
from tuneship.testing.console import TOKEN, ConsoleUser, Rig, console_stages, start_rig
from tuneship.testing.stages import ScriptedStage
from tuneship.v1 import pipeline_pb2

RESULTS = Path(os.environ.get("BENCH_OUT", Path(__file__).parent / "results" / "console.json"))
PIPELINES = int(os.environ.get("BENCH_PIPELINES", "1000"))
LOADS = int(os.environ.get("BENCH_LOADS", "20"))
LIVE_S = float(os.environ.get("BENCH_LIVE_S", "5"))
BATCH = 100
DOWNLOAD_MB = int(os.environ.get("BENCH_DOWNLOAD_MB", "256"))
DOWNLOAD_REPEATS = 3
SMALL_FILES = {stage: {f"{stage}.json": b"{}" * 100, "notes.md": b"# notes\n" * 20}
               for stage in STAGES}  # fmt: skip
"""Each stage of the 1,000 commits two small files: the pipeline page lists them."""
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


def download_rates(user: ConsoleUser, rig: Rig, stages: dict[str, ScriptedStage],
                   store: LocalStore) -> dict[str, Any]:  # fmt: skip
    """MB/s of one ``DOWNLOAD_MB`` GGUF read from the store directly, through the
    controller's ReadArtifact, and through the console (which streams ReadArtifact)."""
    stages["export"].files = {"bench-q8_0.gguf": os.urandom(DOWNLOAD_MB << 20)}
    stub = rig.cluster.stub
    pipeline_id = stub.Submit(pipeline_pb2.SubmitRequest(
        spec_yaml=SPEC.format(n="download", batch="download"))).id  # fmt: skip
    while stub.Get(pipeline_pb2.GetRequest(id=pipeline_id)).phase != pipeline_pb2.SUCCEEDED:
        time.sleep(0.2)
    client = PipelineClient(rig.cluster.controller.address, token=TOKEN)
    key = next(i.key for i in store.list(f"pipelines/{pipeline_id}/") if i.key.endswith(".gguf"))
    url = f"/pipelines/{pipeline_id}/files/export/export/bench-q8_0.gguf"

    def direct() -> int:
        return sum(len(p) for p in store.read_chunks(key))

    def rpc() -> int:
        return sum(len(p) for p in client.read_artifact(pipeline_id, "export", "bench-q8_0.gguf"))

    def console() -> int:
        with user.http.stream("GET", url) as answer:
            return sum(len(p) for p in answer.iter_bytes(1 << 20))

    rates: dict[str, list[float]] = {"store_direct": [], "controller_rpc": [], "console": []}
    for _ in range(DOWNLOAD_REPEATS):  # interleaved, so a busy moment hits all three
        for name, read in (("store_direct", direct), ("controller_rpc", rpc),
                           ("console", console)):  # fmt: skip
            started = time.perf_counter()
            assert read() == DOWNLOAD_MB << 20
            rates[name].append(DOWNLOAD_MB * 1.048576 / (time.perf_counter() - started))
    client.close()
    best = {name: round(max(values), 1) for name, values in rates.items()}
    return {"file_mb": round(DOWNLOAD_MB * 1.048576, 1), "repeats": DOWNLOAD_REPEATS,
            "best_mb_per_s": best,
            "console_vs_store_direct": round(best["console"] / best["store_direct"], 3),
            "console_vs_controller_rpc": round(best["console"] / best["controller_rpc"], 3),
            }  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory() as temp:
        store = LocalStore(Path(temp) / "store")
        stages = console_stages(
            store,
            SMALL_FILES,
            train=ClockedTraining(
                "train", steps=1, step_s=0, store=store, files=SMALL_FILES["train"]
            ),
        )
        for stage in stages.values():
            stage.steps, stage.step_s = 1, 0.0
        rig = start_rig(Path(temp), stages, store=store)
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
                "download": download_rates(user, rig, stages, store),
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
