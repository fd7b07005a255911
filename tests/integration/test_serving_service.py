"""The serving service refuses a spec that asks for another backend than it has."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuneship.common.errors import InvalidInput
from tuneship.common.events import ListSink
from tuneship.common.jobs import StageJob
from tuneship.common.spec import PipelineSpec
from tuneship.common.stagework import StageContext
from tuneship.common.store import LocalStore
from tuneship.common.toolchain import Toolchain
from tuneship.serving import LlamaServerBackend
from tuneship.serving.servicer import run_publish

pytestmark = pytest.mark.integration


def test_a_spec_asking_for_ollama_is_refused_by_a_llama_server_service(
    toolchain: Toolchain, tmp_path: Path
) -> None:
    spec = PipelineSpec.model_validate({
        "apiVersion": "tuneship/v1", "metadata": {"name": "p"},
        "model": {"base": "store:x"}, "dataset": {"train": "store:y"},
        "serve": {"backend": "ollama"},
    })  # fmt: skip
    job = StageJob("p.publish.1", "p", spec.model_dump_json(), {}, "")
    ctx = StageContext(LocalStore(tmp_path / "store"), tmp_path)
    with (
        LlamaServerBackend(toolchain, tmp_path / "serving") as backend,
        pytest.raises(InvalidInput, match="publishes to llama-server") as caught,
    ):
        run_publish(ctx, backend, job, ListSink())
    assert caught.value.where == "serve.backend"
