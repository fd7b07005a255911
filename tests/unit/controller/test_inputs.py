"""Spec locations become committed store inputs: local paths, store:, s3:// in the bucket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.errors import FailedPrecondition, InvalidInput, NotFound
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
    with pytest.raises(InvalidInput, match="unsupported location"):
        resolve_input(store, "model", "model.base", "ftp://host/model")
    with pytest.raises(FailedPrecondition, match="outside the artifact store"):
        resolve_input(store, "model", "model.base", "s3://other-bucket/models/x")
    with pytest.raises(NotFound):
        resolve_input(store, "model", "model.base", f"store:inputs/model/{'0' * 64}/manifest.json")
