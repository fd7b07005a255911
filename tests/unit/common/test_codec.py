"""Stage events keep their meaning through every form they take on the way to a user."""

from __future__ import annotations

import json

import pytest
from tuneship.common.codec import (
    event_from_proto,
    event_from_record,
    event_to_proto,
    event_to_record,
    job_from_proto,
    job_to_proto,
    outcome_event,
    outcome_from_proto,
)
from tuneship.common.errors import InvalidInput
from tuneship.common.events import Log, Metrics, Progress
from tuneship.common.jobs import Artifact, StageJob, StageOutcome
from tuneship.v1 import stage_pb2

pytestmark = pytest.mark.unit

EVENTS = [
    Progress("train", 3, 80, "steps", 12.5, "loss falling"),
    Progress("export", 1, 0, message="quantizing"),  # unknown total, no eta
    Log("merge", "reconciling vocabulary [INST]", "warning"),
    Metrics("train", {"loss": 1.25, "tokens_per_s": 900.0}, 3),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_an_event_survives_the_wire_and_the_event_log(event) -> None:
    message = event_to_proto(event, stage=event.stage, seq=7, task_id="p.train.1", at=5.0)
    assert (message.seq, message.task_id, message.time) == (7, "p.train.1", 5.0)
    assert event_from_proto(stage_pb2.StageEvent.FromString(message.SerializeToString())) == event
    kind, payload = event_to_record(event)
    assert json.loads(json.dumps(payload)) == payload
    assert event_from_record(event.stage, kind, payload) == event


def test_records_keep_the_shape_of_existing_event_logs() -> None:
    # Rows already in a controller's database were written with exactly these fields.
    assert event_to_record(EVENTS[0]) == (
        "progress",
        {"step": 3, "total": 80, "unit": "steps", "eta_s": 12.5, "message": "loss falling"},
    )
    assert event_to_record(EVENTS[2]) == (
        "log",
        {"message": "reconciling vocabulary [INST]", "level": "warning"},
    )
    assert event_to_record(Metrics("train", {"loss": 1.0})) == (
        "metrics",
        {"values": {"loss": 1.0}, "step": None},
    )
    assert event_from_record("", "transition", {"message": "pipeline succeeded"}) is None


def test_results_and_keepalives_are_not_events_and_jobs_round_trip() -> None:
    outcome = StageOutcome({"train": Artifact("k/manifest.json", "ab" * 32, 10)}, {"steps": 4})
    result = outcome_event(outcome, stage="train", seq=9)
    assert event_from_proto(result) is None
    assert event_from_proto(stage_pb2.StageEvent(stage="train", seq=0)) is None
    assert outcome_from_proto(result.result) == outcome
    job = StageJob("p.train.1", "p", "{}", {"base": Artifact("b/manifest.json")}, "pre/", 2)
    assert job_from_proto(job_to_proto(job)) == job
    with pytest.raises(InvalidInput, match="task_id"):
        job_from_proto(stage_pb2.StageRequest(spec_json="{}"))
