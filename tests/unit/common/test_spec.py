"""Spec validation of template.family: only bundled families, refused before anything runs."""

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
