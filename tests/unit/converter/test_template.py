"""Exported chat templates carry no training-only tags and render exactly like the original."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuneship.common.errors import FailedPrecondition
from tuneship.converter.template import (
    check_same_rendering,
    has_training_tags,
    sample_conversations_for_parity,
    strip_training_tags,
)
from tuneship.testing.adapters import add_generation_tags
from tuneship.quickstart.conversations import sample_conversations
from tuneship.quickstart.tiny_models import data_text

pytestmark = pytest.mark.unit

# Whitespace control around the tags in every combination the tags are written in.
TAGGED = [
    "{% for m in messages %}{{ m['role'] }}:{% generation %}{{ m['content'] }}"
    "{% endgeneration %}|{% endfor %}",
    "{%- for m in messages -%}\n  {%- generation -%}\n  {{ m['content'] }}\n"
    "  {%- endgeneration -%}\n|{%- endfor -%}",
    "{% for m in messages %}\n    {% generation %}\n{{ m['content'] }}  \n{% endgeneration %}\n"
    "{% endfor %}",
    "{% for m in messages %}[{%+ generation +%} {{ m['content'] }} {%+ endgeneration +%}]"
    "{% endfor %}",
    "{% for m in messages %}a \n {%- generation %}\n\nb{{ m['content'] }}{% endgeneration -%}"
    "  \n c{% endfor %}",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_chatml: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_chatml)


def conversations() -> list[list[dict[str, str]]]:
    return sample_conversations_for_parity(sample_conversations(12, seed=3))


@pytest.mark.parametrize("template", TAGGED)
def test_stripped_template_has_no_tags_and_renders_identically(template: str, tokenizer) -> None:
    stripped = strip_training_tags(template)
    assert has_training_tags(template) and not has_training_tags(stripped)
    assert "generation" not in stripped
    check_same_rendering(tokenizer, template, stripped, conversations())


@pytest.mark.parametrize("fixture", ["tiny_chatml", "tiny_llama2"])
def test_fixture_templates_tagged_for_training_strip_back_to_the_same_output(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
    original = data_text("chatml.jinja" if fixture == "tiny_chatml" else "llama2.jinja")
    tagged = add_generation_tags(original)
    stripped = strip_training_tags(tagged)
    check_same_rendering(tokenizer, tagged, stripped, conversations())
    check_same_rendering(tokenizer, original, stripped, conversations())


def test_a_rendering_difference_fails_with_a_diff(tokenizer) -> None:
    original = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(FailedPrecondition) as caught:
        check_same_rendering(tokenizer, original, original.replace("\n", " "), conversations())
    assert "renders conversation 0 differently" in caught.value.message
    assert "--- original" in caught.value.message and "+++ exported" in caught.value.message


def test_template_without_tags_is_unchanged() -> None:
    plain = data_text("chatml.jinja")
    assert strip_training_tags(plain) == plain
