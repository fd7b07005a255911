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


EVAL = """apiVersion: tuneship/v1
metadata: {{name: demo}}
model: {{base: /models/base}}
dataset: {{train: data.jsonl{dataset}}}
train:
  max_steps: 100
{fields}"""


def eval_spec(fields: str, dataset: str = "") -> str:
    return EVAL.format(dataset=dataset, fields="".join(f"  {line}\n" for line in fields.split(";")))


@pytest.mark.parametrize(
    ("fields", "where", "words"),
    [
        ("early_stopping_patience: 3", "spec.yaml:7: train.early_stopping_patience",
         "set train.eval_steps too"),
        ("export: best", "spec.yaml:7: train.export", "set eval_steps"),
        ("eval_steps: 0", "spec.yaml:7: train.eval_steps", "greater than or equal to 1"),
        ("eval_steps: 10;early_stopping_patience: 0",
         "spec.yaml:8: train.early_stopping_patience", "greater than or equal to 1"),
        ("export: first", "spec.yaml:7: train.export", "'best' or 'last'"),
    ],
)  # fmt: skip
def test_evaluation_fields_are_refused_at_their_line_with_what_to_do(fields, where, words) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(eval_spec(fields), "spec.yaml")
    [(found, message)] = caught.value.problems
    assert found == where
    assert words in message


def test_eval_steps_without_an_eval_split_names_the_dataset_fields() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(eval_spec("eval_steps: 10", ", eval_fraction: 0"), "spec.yaml")
    [(where, message)] = caught.value.problems
    assert where == "spec.yaml:5: train"
    assert "dataset.eval_fraction is 0 and dataset.eval is not set" in message
    assert "set dataset.eval_fraction (e.g. 0.1) or dataset.eval" in message


def test_evaluation_fields_pass_together() -> None:
    spec = parse_spec(eval_spec("eval_steps: 10;early_stopping_patience: 3;export: best"))
    assert (spec.train.eval_steps, spec.train.early_stopping_patience) == (10, 3)
    assert spec.train.export == "best"
    held_out = parse_spec(eval_spec("eval_steps: 5", ", eval: e.jsonl, eval_fraction: 0"))
    assert held_out.train.eval_steps == 5
    default = parse_spec(eval_spec("seed: 1")).train
    assert (default.eval_steps, default.early_stopping_patience, default.export) == (
        None, None, "last",
    )  # fmt: skip
