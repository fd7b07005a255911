"""Every example spec validates; a spec with many mistakes reports each with file:line."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from tuneship.common.spec import SpecError, load_spec, parse_spec

pytestmark = pytest.mark.unit
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    spec = load_spec(path)
    assert spec.metadata.name
    assert spec.export.quant_types


def test_there_are_examples_for_each_method() -> None:
    methods = {load_spec(p).train.method for p in EXAMPLES}
    assert methods == {"lora", "qlora", "full"}


def test_quickstart_example_is_the_bundled_quickstart() -> None:
    bundled = resources.files("tuneship.cli").joinpath("quickstart.yaml").read_text()
    example = next(p for p in EXAMPLES if p.name == "quickstart.yaml")
    assert example.read_text() == bundled


FIVE_MISTAKES = """apiVersion: tuneship/v1
metadata:
  name: Has Spaces
model:
  base: /models/base
dataset:
  train: data.jsonl
  on_invalid: ignore
train:
  method: lora
  lora:
    r: 0
  learning_rate: -1
export:
  quant_typs: [q4_k_m]
"""


def test_five_mistakes_are_all_reported_with_lines_and_field_paths() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(FIVE_MISTAKES, "bad.yaml")
    where = [w for w, _ in caught.value.problems]
    assert where == [
        "bad.yaml:3: metadata.name",
        "bad.yaml:8: dataset.on_invalid",
        "bad.yaml:12: train.lora.r",
        "bad.yaml:13: train.learning_rate",
        "bad.yaml:15: export.quant_typs",
    ]
    text = caught.value.render()
    assert "5 problem(s)" in text and "'error' or 'skip'" in text and "unknown field" in text


def test_missing_spec_file_and_bad_yaml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="cannot read spec"):
        load_spec(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: tuneship/v1\nmetadata: [unclosed\n")
    with pytest.raises(Exception, match=r"broken\.yaml:\d+: not valid YAML"):
        load_spec(broken)
