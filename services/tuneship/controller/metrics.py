"""Prometheus metrics of the controller.

- ``tuneship_pipelines{phase}``: pipelines in each phase (read from the state store at
  scrape time, so they are right after a restart too).
- ``tuneship_stage_queue_depth{stage}``: pipelines whose next stage is waiting to start.
- ``tuneship_stage_running{stage}``: stage attempts running now.
- ``tuneship_stage_duration_seconds{stage,outcome}``: how long attempts took.
- ``tuneship_training_tokens_per_second{pipeline}``: the latest reported training
  throughput of each running training (removed when the training ends).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tuneship.common.stages import STAGES
from tuneship.controller.machine import Phase
from tuneship.controller.state import StateStore

_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 3 * 3600, 12 * 3600, 48 * 3600)


class _StateCollector(Collector):
    """Counts read from the state store and the scheduler when Prometheus scrapes."""

    def __init__(self, state: StateStore, running: Any) -> None:
        self.state = state
        self.running = running

    def collect(self) -> Iterator[GaugeMetricFamily]:
        phases = GaugeMetricFamily("tuneship_pipelines", "Pipelines by phase.", labels=["phase"])
        queued = dict.fromkeys(STAGES, 0)
        counts = dict.fromkeys((p.value for p in Phase), 0)
        now = time.time()
        for phase in Phase:
            counts[phase.value] = len(self.state.ids_in_phase(phase))
        for current in self.state.next_stages():
            if current.phase is Phase.PENDING and current.not_before <= now:
                queued[current.name] += 1
        for phase_name, count in counts.items():
            phases.add_metric([phase_name], count)
        yield phases
        depth = GaugeMetricFamily(
            "tuneship_stage_queue_depth", "Pipelines waiting for a stage.", labels=["stage"]
        )
        running = GaugeMetricFamily(
            "tuneship_stage_running", "Stage attempts running now.", labels=["stage"]
        )
        for stage in STAGES:
            depth.add_metric([stage], queued[stage])
            running.add_metric([stage], self.running(stage))
        yield depth
        yield running


@dataclass
class ControllerMetrics:
    """The controller's registry; the scheduler reports stage ends and throughput here."""

    state: StateStore
    running: Any
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.registry.register(_StateCollector(self.state, self.running))
        self.durations = Histogram(
            "tuneship_stage_duration_seconds",
            "Duration of stage attempts.",
            ["stage", "outcome"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.throughput = Gauge(
            "tuneship_training_tokens_per_second",
            "Latest trained tokens per second of each running training.",
            ["pipeline"],
            registry=self.registry,
        )

    def stage_finished(self, pipeline: str, stage: str, outcome: str, seconds: float) -> None:
        self.durations.labels(stage, outcome).observe(max(seconds, 0.0))
        if stage == "train":
            with contextlib.suppress(KeyError):  # it never reported any throughput
                self.throughput.remove(pipeline)

    def training_throughput(self, pipeline: str, tokens_per_s: float) -> None:
        self.throughput.labels(pipeline).set(tokens_per_s)

    def serve(self, host: str, port: int) -> Any:
        """Serve ``/metrics`` over HTTP; returns the server (``shutdown()`` stops it)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
