"""Key safety on both store backends, and what a spec may read.

Every bad key is refused by the one check both adapters call (``layout.check_key`` /
``check_write_key``) before a byte is written: the local store's root is never created
and the S3 bucket never is either. A spec naming another pipeline's outputs is refused
where the controller resolves inputs; reuse through the stage cache still works.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuneship.common import layout
from tuneship.common.errors import InvalidInput
from tuneship.common.events import NullSink
from tuneship.common.jobs import Artifact, StageJob, StageOutcome
from tuneship.common.stagework import StageContext, run_committed_stage
from tuneship.common.store import ArtifactStore, LocalStore, S3Store
from tuneship.common.store.commit import fetch_stage, upload_input
from tuneship.controller.inputs import resolve_input
from tuneship.testing.s3server import S3ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BAD_KEYS = {
    "empty": "",
    "absolute": "/etc/passwd",
    "dot-dot": "../outside.json",
    "dot-dot inside": "pipelines/p1/../../etc/passwd",
    "empty segment": "pipelines/p1//manifest.json",
    "trailing slash": "pipelines/p1/stages/",
    "dot": "pipelines/p1/./manifest.json",
    "backslash": "pipelines\\p1\\manifest.json",
    "NUL": "pipelines/p1/x\x00.json",
    "newline": "pipelines/p1/x\n.json",
    "too long": "pipelines/p1/" + "x" * 1000,
    "outside the areas": "elsewhere/model.gguf",
    "no pipeline": "pipelines/manifest.json",
    "bad pipeline": "pipelines/.hidden/manifest.json",
}


def _bucket_exists(store: ArtifactStore) -> bool:
    return isinstance(store, S3Store) and store.client.bucket_exists(store.bucket)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
        return
    server: S3ServerProcess = request.getfixturevalue("s3_server")
    yield S3Store(server.endpoint, server.access_key, server.secret_key,
                  f"k-{uuid.uuid4().hex[:12]}", secure=False, retries=0)  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD_KEYS))
def test_bad_keys_are_refused_before_a_byte_is_written(
    store: ArtifactStore, name: str, tmp_path: Path
) -> None:
    key = BAD_KEYS[name]
    source = tmp_path / "weights.bin"
    source.write_bytes(b"w" * 100)
    for write in (lambda: store.put_bytes(key, b"{}"), lambda: store.put_file(key, source)):
        with pytest.raises(InvalidInput) as caught:
            write()
        assert caught.value.where == "key"
        assert repr(key) in caught.value.message  # which key, and what is wrong with it
        assert caught.value.hint
    assert not (tmp_path / "store").exists()
    assert not _bucket_exists(store)


def test_reads_of_unsafe_keys_are_refused_too(store: ArtifactStore, tmp_path: Path) -> None:
    for key in ("../outside.json", "/etc/passwd", "a\\b", "a\x00b"):
        with pytest.raises(InvalidInput):
            store.get_bytes(key)
        with pytest.raises(InvalidInput):
            store.get_file(key, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def train_job(store: ArtifactStore, pipeline: str, tmp_path: Path) -> StageJob:
    """A training job of ``pipeline`` over an uploaded dataset (the same for every pipeline)."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    dataset = upload_input(store, data, kind="dataset")
    return StageJob(
        task_id=f"{pipeline}.train.1", pipeline=pipeline, spec_json="{}",
        inputs={"train": Artifact(dataset.key, dataset.digest, dataset.total_size)},
        output_prefix=layout.stage_prefix(pipeline, "train"),
    )  # fmt: skip


def test_a_spec_cannot_name_another_pipelines_outputs_but_the_cache_reuses_them(
    store: ArtifactStore, tmp_path: Path
) -> None:
    ctx = StageContext(store, tmp_path / "work")
    runs: list[str] = []

    def work(workdir: Path) -> tuple[Path, dict[str, object]]:
        runs.append(str(workdir))
        out = workdir / "out"
        out.mkdir(parents=True, exist_ok=True)
        (out / "adapter.safetensors").write_bytes(b"adapter of p1")
        return out, {}

    def train(pipeline: str) -> StageOutcome:
        job = train_job(store, pipeline, tmp_path)
        return run_committed_stage(
            ctx, job, NullSink(), stage="train", section={"lr": 1}, versions={}, work=work
        )

    private = train("p1").outputs["train"].key
    assert private == layout.stage_manifest("p1", "train")

    # The legitimate path: the same work for p2 is found through the cache and reused.
    second = train("p2")
    assert second.cached and second.outputs["train"].key == private and len(runs) == 1
    fetch_stage(store, private, tmp_path / "fetched")
    assert (tmp_path / "fetched" / "adapter.safetensors").read_bytes() == b"adapter of p1"

    # A spec naming p1's outputs directly is refused, whichever way it names them.
    staged = layout.staging_prefix("p1", "train", "p1.train.1")
    locations = [
        f"store:{private}",
        f"store:{layout.cache_entry('0' * 64)}",
        f"store:{staged}adapter.safetensors",
        "store:pipelines/p1/../p1/stages/train/manifest.json",
    ]
    if isinstance(store, S3Store):
        locations += [f"s3://{store.bucket}/{staged}", f"s3://{store.bucket}/cache/"]
    else:
        locations += [str(store.root / staged)]  # type: ignore[attr-defined]
    for location in locations:
        with pytest.raises(InvalidInput) as caught:
            resolve_input(store, "model", "model.base", location)
        assert caught.value.where == "model.base", location
        assert "stage cache" in (caught.value.hint or "") or "'..'" in caught.value.message

    # A forged "input" manifest that points at p1's files is refused as well.
    forged_key = layout.input_manifest("model", "f" * 64)
    store.put_bytes(forged_key, store.get_bytes(private))
    with pytest.raises(InvalidInput, match="not an input manifest"):
        resolve_input(store, "model", "model.base", f"store:{forged_key}")

    # An uploaded input still resolves.
    data = tmp_path / "eval.jsonl"
    data.write_text('{"messages": []}\n')
    uploaded = upload_input(store, data, kind="dataset")
    resolved = resolve_input(store, "dataset", "dataset.eval", f"store:{uploaded.key}")
    assert resolved.key == uploaded.key
