"""Spec validation: template families and training numbers, refused at their line."""

from __future__ import annotations

import pytest
from tuneship.common.chat_templates import FAMILIES
from tuneship.common.spec import SpecError, TemplateSpec, parse_spec

pytestmark = pytest.mark.unit

SPEC = """apiVersion: tuneship/v1
metadata:
  name: demo
model:
  base: /models/base
dataset:
  train: data.jsonl
template:
  family: {family}
"""


def test_an_unknown_family_is_refused_at_its_line_with_the_known_families() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(SPEC.format(family="chatlm"), "spec.yaml")
    [(where, message)] = caught.value.problems
    assert where == "spec.yaml:9: template.family"
    assert "unknown chat template family 'chatlm'" in message
    assert all(family in message for family in FAMILIES)
    assert "template.path" in message


@pytest.mark.parametrize("family", FAMILIES)
def test_every_bundled_family_is_accepted(family: str) -> None:
    assert parse_spec(SPEC.format(family=family)).template.family == family


def test_family_is_matched_like_the_templates_are_named() -> None:
    assert parse_spec(SPEC.format(family="ChatML")).template.family == "chatml"
    assert TemplateSpec().family is None


TRAIN = """apiVersion: tuneship/v1
metadata: {{name: demo}}
model: {{base: /models/base}}
dataset: {{train: data.jsonl}}
train:
  {field}: {value}
"""


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("max_steps", "0", "max_steps 0 would train nothing"),
        ("max_steps", "1000000000000", "less than or equal to 100000000"),
        ("max_steps", "-5", "greater than or equal to -1"),
        ("per_device_train_batch_size", "100000000", "less than or equal to 65536"),
        ("num_train_epochs", "1e9", "less than or equal to 10000"),
    ],
)
def test_absurd_training_numbers_are_refused_at_their_line(field, value, words) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(TRAIN.format(field=field, value=value), "spec.yaml")
    [(where, message)] = caught.value.problems
    assert where == f"spec.yaml:6: train.{field}"
    assert words in message


def test_sane_training_numbers_pass() -> None:
    assert parse_spec(TRAIN.format(field="max_steps", value="-1")).train.max_steps == -1
    assert parse_spec(TRAIN.format(field="max_steps", value="1")).train.max_steps == 1
