"""Hugging Face datasets through the store: the controller commits a save_to_disk
directory or a hub snapshot (with the commit it resolved to) as one input of many
files; a worker fetches it and reads the same records, named as a local read names them."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from tuneship.common.conversations import load_conversations
from tuneship.common.errors import InvalidInput
from tuneship.common.jobs import StageJob
from tuneship.common.spec import DatasetSpec, PipelineSpec
from tuneship.common.stagework import StageContext
from tuneship.common.store import LocalStore
from tuneship.common.store.commit import read_manifest
from tuneship.controller.inputs import StoreInputs, resolve_input
from tuneship.testing.hubcache import cache_dataset, offline_hub

pytestmark = pytest.mark.unit


class Sink:
    def emit(self, event: object) -> None:
        return None


def qa(count: int, start: int = 0) -> list[dict[str, str]]:
    return [{"question": f"q{i}?", "answer": f"a{i}."} for i in range(start, start + count)]


def through_a_worker(tmp_path: Path, location: str) -> tuple[dict, list[str]]:
    """Commit ``location`` as the controller does, fetch it as a worker does; returns the
    fetched files and the input manifest's file names."""
    store = LocalStore(tmp_path / "store")
    spec = PipelineSpec.model_validate(
        {"apiVersion": "tuneship/v1", "metadata": {"name": "d"},
         "model": {"base": "store:x"}, "dataset": {"train": location}}
    )  # fmt: skip
    train = resolve_input(store, "dataset", "dataset.train", spec.dataset.train)
    job = StageJob("p.train.1", "p", spec.model_dump_json(), {"train": train}, "p/", 1)
    files = StageContext(store, tmp_path / "work").fetch_dataset(job, tmp_path / "w", Sink())
    return files, [f.name for f in read_manifest(store, train.key).files]


def test_a_dataset_dict_directory_travels_as_one_input(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(qa(8)),
         "test": datasets.Dataset.from_list(qa(2, 50))}
    ).save_to_disk(str(path))  # fmt: skip
    files, names = through_a_worker(tmp_path, str(path))
    assert "dataset_dict.json" in names and "train/state.json" in names
    assert files["train"].is_dir()
    local = load_conversations(DatasetSpec(train=str(path)))
    fetched = load_conversations(DatasetSpec(train=str(path)), files)
    assert [c.where for c in fetched.train] == [c.where for c in local.train]
    assert fetched.sha256 == local.sha256 and len(fetched.eval) == 2


def test_a_hub_dataset_is_stored_with_its_commit(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(qa(13)), buffer)
    data = {"data/train-00000-of-00001.parquet": buffer.getvalue()}
    commit = cache_dataset(tmp_path / "hub", "org/qa", data)
    with offline_hub(tmp_path / "hub"):
        files, names = through_a_worker(tmp_path, "hf://datasets/org/qa@main")
        store = LocalStore(tmp_path / "store")
        keys = {resolve_input(store, "dataset", "dataset.train", f"hf://datasets/org/qa{at}").key
                for at in ("", "@main", f"@{commit}")}  # fmt: skip
    assert len(keys) == 1  # a branch and the commit it points at are one stored input
    assert names == ["data/train-00000-of-00001.parquet", "tuneship-source.json"]
    # Read without the hub: the stored copy names the commit the branch resolved to.
    loaded = load_conversations(DatasetSpec(train="hf://datasets/org/qa@main"), files)
    assert loaded.train[0].where.startswith(f"hf://datasets/org/qa@{commit}:train:row ")
    assert loaded.revision == commit


def test_a_hub_dataset_without_data_files_is_refused(tmp_path: Path) -> None:
    cache_dataset(tmp_path / "hub", "org/script", {"script.py": b"import datasets\n"})
    with offline_hub(tmp_path / "hub"), pytest.raises(InvalidInput) as caught:
        resolve_input(
            LocalStore(tmp_path / "store"), "dataset", "dataset.train", "hf://datasets/org/script"
        )
    assert "has no Parquet, JSONL, JSON or Arrow files" in caught.value.message
    assert caught.value.where == "dataset.train"


def test_hub_locations_of_the_wrong_kind_are_refused(tmp_path: Path) -> None:
    inputs = StoreInputs(LocalStore(tmp_path / "store"))
    for kind, location in (("dataset", "hf://org/qa"), ("model", "hf://datasets/org/qa")):
        with pytest.raises(InvalidInput, match="wrong kind of hub repository"):
            resolve_input(inputs.store, kind, "dataset.train", location)
