"""An s3:// model location in the store's own bucket becomes a committed input."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tuneship.common.store import S3Store
from tuneship.common.store.commit import fetch_stage
from tuneship.controller.inputs import resolve_input

pytestmark = pytest.mark.integration


def test_s3_prefix_and_object_become_inputs(s3_server, tiny_chatml: Path, tmp_path: Path) -> None:
    bucket = f"inputs-{int(time.time() * 1000) % 10**9}"
    store = S3Store(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, bucket,
                    secure=False)  # fmt: skip
    # Copied in by someone else (as `mc cp` would): tuneship itself writes only its areas.
    store.client.make_bucket(bucket)
    for path in tiny_chatml.iterdir():
        store.client.fput_object(bucket, f"models/tiny/{path.name}", str(path))
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": []}\n')
    store.client.fput_object(bucket, "data/train.jsonl", str(data))

    model = resolve_input(store, "model", "model.base", f"s3://{bucket}/models/tiny/")
    fetched = fetch_stage(store, model.key, tmp_path / "model")
    assert sorted(f.name for f in fetched.files) == sorted(p.name for p in tiny_chatml.iterdir())
    for path in tiny_chatml.iterdir():
        assert (tmp_path / "model" / path.name).read_bytes() == path.read_bytes()
    dataset = resolve_input(store, "dataset", "dataset.train", f"s3://{bucket}/data/train.jsonl")
    assert dataset.key.startswith("inputs/dataset/")
