"""GGUF metadata carries the model's name, its base model, the fine-tune method and license."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.converter import lineage_metadata

pytestmark = pytest.mark.unit


def test_lineage_from_the_merge_manifest_and_the_base_readme(tmp_path: Path) -> None:
    base, merged = tmp_path / "llama-base", tmp_path / "merged"
    base.mkdir()
    merged.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a base model\n")
    manifest = {"training": {"method": "qlora", "base_model": {"path": str(base)}}}
    (merged / "merge-manifest.json").write_text(json.dumps(manifest))
    meta = lineage_metadata(merged, "pirate")
    assert meta["general.name"] == "pirate"
    assert meta["general.base_models"][0]["name"] == "llama-base"
    assert meta["general.finetune"] == "qlora"
    assert meta["general.license"] == "apache-2.0"


def test_without_a_manifest_only_the_name(tmp_path: Path) -> None:
    assert lineage_metadata(tmp_path) == {"general.name": tmp_path.name}
