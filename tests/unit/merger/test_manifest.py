"""The merge reads the trainer's manifest and names the field when one is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.errors import InvalidInput, NotFound
from tuneship.merger import read_manifest

pytestmark = pytest.mark.unit

VOCAB = {
    "decision": "added", "pad_token": "<pad>", "pad_token_id": 1024,
    "tokenizer_size_before": 1024, "tokenizer_size_after": 1025,
    "embedding_rows_before": 1024, "embedding_rows_after": 1088, "pad_to_multiple_of": 64,
}  # fmt: skip


def write(tmp_path: Path, manifest: dict, dirs: tuple[str, ...] = ("adapter", "tokenizer")) -> Path:
    for name in dirs:
        (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / "training-manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_reads_method_and_vocab_decision(tmp_path: Path) -> None:
    manifest = read_manifest(write(tmp_path, {"method": "lora", "vocab": VOCAB, "extra": 1}))
    assert manifest.method == "lora" and manifest.vocab.embedding_rows_after == 1088
    assert manifest.weights_dir == tmp_path / "adapter" and manifest.raw["extra"] == 1


def test_full_fine_tune_reads_weights_from_model_dir(tmp_path: Path) -> None:
    manifest = read_manifest(
        write(tmp_path, {"method": "full", "vocab": VOCAB}, ("model", "tokenizer"))
    )
    assert manifest.weights_dir == tmp_path / "model"


def test_missing_manifest_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"training-manifest\.json"):
        read_manifest(tmp_path)


def test_wrong_field_names_its_path(tmp_path: Path) -> None:
    broken = {**VOCAB, "embedding_rows_after": "many"}
    with pytest.raises(InvalidInput) as caught:
        read_manifest(write(tmp_path, {"method": "lora", "vocab": broken}))
    assert caught.value.where is not None and caught.value.where.endswith(
        "vocab.embedding_rows_after"
    )


def test_missing_adapter_dir_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="adapter"):
        read_manifest(write(tmp_path, {"method": "lora", "vocab": VOCAB}, ("tokenizer",)))
