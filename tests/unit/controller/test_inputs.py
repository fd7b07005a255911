"""Spec locations become committed store inputs: local paths, store:, s3:// in the bucket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.errors import FailedPrecondition, InvalidInput, NotFound
from tuneship.common.spec import PipelineSpec
from tuneship.common.store import LocalStore
from tuneship.common.store.commit import fetch_stage
from tuneship.controller.inputs import resolve_input

pytestmark = pytest.mark.unit


def test_local_paths_are_uploaded_once_and_store_refs_resolve(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": []}) + "\n")
    first = resolve_input(store, "dataset", "dataset.train", str(data))
    again = resolve_input(store, "dataset", "dataset.train", str(data))
    assert first == again  # content-addressed: the same file is one input
    by_ref = resolve_input(store, "dataset", "dataset.train", f"store:{first.key}")
    assert by_ref == first
    fetch_stage(store, first.key, tmp_path / "back")
    assert (tmp_path / "back" / "train.jsonl").read_text() == data.read_text()


def test_missing_and_unsupported_locations_name_the_field(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    with pytest.raises(InvalidInput, match="does not exist") as caught:
        resolve_input(store, "model", "model.base", str(tmp_path / "nope"))
    assert caught.value.where == "model.base"
    with pytest.raises(InvalidInput, match="does not exist") as caught:
        resolve_input(store, "model", "model.base", "tiny-chatml")  # as in the quickstart
    assert "relative path is read from the directory the controller runs in" in str(
        caught.value.hint
    )
    with pytest.raises(InvalidInput, match="unsupported location"):
        resolve_input(store, "model", "model.base", "ftp://host/model")
    with pytest.raises(FailedPrecondition, match="outside the artifact store"):
        resolve_input(store, "model", "model.base", "s3://other-bucket/models/x")
    with pytest.raises(NotFound):
        resolve_input(store, "model", "model.base", f"store:inputs/model/{'0' * 64}/manifest.json")


def refer_to(tmp_path: Path, location: str) -> PipelineSpec:
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}\n')
    return PipelineSpec.model_validate(
        {
            "apiVersion": "tuneship/v1",
            "metadata": {"name": "dpo"},
            "model": {"base": location},
            "dataset": {"train": str(data)},
        }
    )


def test_a_pipeline_reference_copies_its_merged_model_into_the_inputs(tmp_path: Path) -> None:
    from functools import partial

    from tuneship.common.store.commit import commit_stage
    from tuneship.controller.app import merged_model
    from tuneship.controller.inputs import StoreInputs
    from tuneship.controller.state import StateStore

    store = LocalStore(tmp_path / "store")
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    sft = state.create("sft", "{}", 0, {}, {})
    inputs = StoreInputs(store)
    inputs.merged_models = partial(merged_model, state)

    with pytest.raises(InvalidInput) as unknown:
        inputs(refer_to(tmp_path, "pipeline:nope-123456"))
    assert (
        unknown.value.where == "model.base" and "no pipeline 'nope-123456'" in unknown.value.message
    )
    with pytest.raises(FailedPrecondition) as early:
        inputs(refer_to(tmp_path, f"pipeline:{sft}"))
    assert early.value.where == "model.base" and "merge stage is pending" in early.value.message
    assert f"tuneship watch {sft}" in (early.value.hint or "")

    model = tmp_path / "merged"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    committed = commit_stage(store, model, pipeline=sft, stage="merge", attempt="t1")
    for stage in ("train", "merge"):
        state.start_stage(sft, stage, f"{sft}.{stage}.1", 1, "started")
        outputs = {stage: {"key": committed.key, "sha256": "", "size": 0}}
        state.finish_stage(sft, stage, outputs, {}, "done")
    found = inputs(refer_to(tmp_path, f"pipeline:{sft}"))["base"]
    assert found.key.startswith("inputs/model/")  # a copy: independent of the SFT pipeline
    store.delete_prefix(f"pipelines/{sft}/")
    fetch_stage(store, found.key, tmp_path / "back")
    assert (tmp_path / "back" / "model.safetensors").read_bytes() == b"weights"

    with pytest.raises(InvalidInput, match=r"only model\.base may name another pipeline"):
        resolve_input(store, "dataset", "dataset.train", f"pipeline:{sft}")
