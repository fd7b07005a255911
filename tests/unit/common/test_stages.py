"""The stage table agrees with the protocol and with itself."""

from __future__ import annotations

import pytest
from tuneship.common.stages import COMPONENTS, PIPELINE, STAGES, stage_named, stage_of_component
from tuneship.v1 import workers_pb2

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("stage", PIPELINE, ids=STAGES)
def test_each_stage_has_its_streaming_rpc_and_cancel_in_the_proto(stage) -> None:
    service = workers_pb2.DESCRIPTOR.services_by_name[stage.service]
    assert service.full_name == stage.full_service
    run = service.methods_by_name[stage.method]
    assert run.input_type.name == "StageRequest"
    assert run.output_type.name == "StageEvent"
    assert run.server_streaming and not run.client_streaming
    assert service.methods_by_name["Cancel"].input_type.name == "CancelRequest"


def test_a_stage_reads_only_pipeline_inputs_and_earlier_stages() -> None:
    for position, stage in enumerate(PIPELINE):
        for name, source in stage.inputs.items():
            kind, _, ref = source.partition(":")
            assert kind in ("input", "stage"), f"{stage.name}.{name}: {source}"
            if kind == "stage":
                assert ref in STAGES[:position], f"{stage.name}.{name} reads a later stage"
            else:
                assert ref in ("base", "train", "eval"), f"{stage.name}.{name}: {source}"


def test_names_and_components_are_unique_and_found() -> None:
    assert len(set(STAGES)) == len(STAGES) and len(set(COMPONENTS)) == len(COMPONENTS)
    for stage in PIPELINE:
        assert stage_named(stage.name) is stage
        assert stage_of_component(stage.component) is stage
    with pytest.raises(KeyError):
        stage_named("nope")
