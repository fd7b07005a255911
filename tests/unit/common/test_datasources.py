"""Hugging Face datasets as dataset locations: save_to_disk directories (a Dataset or a
DatasetDict with its splits) and hf://datasets/… resolved by the real huggingface_hub
from a local hub cache, with records named by split and row (and the hub commit)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydantic import ValidationError
from tuneship.common.conversations import load_conversations
from tuneship.common.errors import InvalidInput, Unavailable
from tuneship.common.spec import DatasetSpec
from tuneship.testing.hubcache import cache_dataset, offline_hub

pytestmark = pytest.mark.unit


def qa(count: int, start: int = 0) -> list[dict[str, str]]:
    return [{"question": f"q{i}?", "answer": f"a{i}."} for i in range(start, start + count)]


def save_dict(path: Path, **splits: list[dict]) -> Path:
    import datasets

    datasets.DatasetDict(
        {name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}
    ).save_to_disk(str(path))
    return path


def parquet_bytes(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def test_a_saved_dataset_reads_with_rows_named(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(qa(5)).save_to_disk(str(tmp_path / "ds"))
    loaded = load_conversations(DatasetSpec(train=str(tmp_path / "ds"), eval_fraction=0.2))
    assert len(loaded.train) == 4 and len(loaded.eval) == 1
    assert {c.where for c in loaded.train + loaded.eval} == {
        f"{tmp_path / 'ds'}:row {i}" for i in range(5)
    }
    with pytest.raises(InvalidInput, match=r"one Dataset .* it has no split 'test'"):
        load_conversations(DatasetSpec(train=str(tmp_path / "ds"), split="test"))


def test_a_dataset_dict_trains_on_its_split_and_holds_out_its_own(tmp_path: Path) -> None:
    path = save_dict(tmp_path / "dd", train=qa(6), validation=qa(2, 100), test=qa(3, 200))
    loaded = load_conversations(DatasetSpec(train=str(path)))
    assert [c.where for c in loaded.train] == [f"{path}:train:row {i}" for i in range(6)]
    # The dataset's own validation split is the held-out set, not 10% of train.
    assert [c.messages[0]["content"] for c in loaded.eval] == ["q100?", "q101?"]
    assert loaded.sources == {"train": f"{path}:train", "eval": f"{path}:validation"}
    chosen = load_conversations(DatasetSpec(train=str(path), split="test", eval_split="train"))
    assert len(chosen.train) == 3 and len(chosen.eval) == 6
    with pytest.raises(InvalidInput) as caught:
        load_conversations(DatasetSpec(train=str(path), split="dev"))
    assert caught.value.where == "dataset.split"
    assert "has no split 'dev' (it has: train, validation, test)" in caught.value.message


def test_a_dataset_dict_without_a_held_out_split_splits_train(tmp_path: Path) -> None:
    path = save_dict(tmp_path / "dd", train=qa(10))
    loaded = load_conversations(DatasetSpec(train=str(path), eval_fraction=0.2))
    assert len(loaded.train) == 8 and len(loaded.eval) == 2


def test_a_bad_record_in_a_saved_dataset_names_split_and_row(tmp_path: Path) -> None:
    path = save_dict(tmp_path / "dd", train=[*qa(3), {"question": "x?", "answer": " "}])
    with pytest.raises(InvalidInput) as caught:
        load_conversations(DatasetSpec(train=str(path)))
    assert caught.value.where == f"{path}:train:row 3"
    assert "empty content" in caught.value.message


def test_a_directory_that_is_no_saved_dataset_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "train.jsonl").write_text("{}\n")
    with pytest.raises(InvalidInput, match="not one written by save_to_disk"):
        load_conversations(DatasetSpec(train=str(tmp_path / "plain")))


def test_a_hub_dataset_resolves_offline_to_its_commit(tmp_path: Path) -> None:
    files = {
        "data/train-00000-of-00001.parquet": parquet_bytes(qa(14)),
        "data/test-00000-of-00001.parquet": parquet_bytes(qa(2, 50)),
        "README.md": b"# a dataset\n",
    }
    commit = cache_dataset(tmp_path / "hub", "org/qa", files, refs=("main", "v1"))
    with offline_hub(tmp_path / "hub"):
        for revision in ("", "@main", "@v1", f"@{commit}"):
            loaded = load_conversations(DatasetSpec(train=f"hf://datasets/org/qa{revision}"))
            assert loaded.revision == commit
            assert loaded.train[12].where == f"hf://datasets/org/qa@{commit}:train:row 12"
            assert loaded.sources["eval"] == f"hf://datasets/org/qa@{commit}:test"
            assert len(loaded.eval) == 2
        with pytest.raises(Unavailable) as caught:
            load_conversations(DatasetSpec(train="hf://datasets/org/qa@v2"))
        assert caught.value.where == "dataset.train"
        assert "cannot resolve hf://datasets/org/qa@v2" in caught.value.message


def test_hub_jsonl_files_are_named_by_their_path_in_the_repository(tmp_path: Path) -> None:
    lines = b'{"prompt": "a?", "response": "b"}\n{"prompt": "c?"}\n'
    commit = cache_dataset(tmp_path / "hub", "org/pr", {"train.jsonl": lines})
    with offline_hub(tmp_path / "hub"), pytest.raises(InvalidInput) as caught:
        load_conversations(DatasetSpec(train="hf://datasets/org/pr"))
    assert caught.value.where == f"hf://datasets/org/pr@{commit}/train.jsonl:2"


@pytest.mark.parametrize("location", ["hf://datasets/org", "hf://datasets/org/name@"])
def test_malformed_hub_locations_are_spec_errors(location: str) -> None:
    with pytest.raises(ValidationError, match="not a hub dataset location"):
        DatasetSpec(train=location)


def test_a_model_location_is_not_a_dataset() -> None:
    with pytest.raises(InvalidInput, match="a dataset on the hub is hf://datasets/<org>/<name>"):
        load_conversations(DatasetSpec(train="hf://org/name"))


def test_a_split_named_for_a_single_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "a?", "answer": "b"}\n')
    for fields, where in (({"split": "test"}, "dataset.split"),
                          ({"eval_split": "test"}, "dataset.eval_split")):  # fmt: skip
        with pytest.raises(InvalidInput, match=r"names split 'test', but .* is one file") as caught:
            load_conversations(DatasetSpec(train=str(path), **fields))
        assert caught.value.where == where
