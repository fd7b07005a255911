"""Exported chat templates carry no training-only tags and render exactly like the original."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuneship.common.chat import ChatTemplateError, has_training_tags, strip_training_tags
from tuneship.common.conversations import Conversation
from tuneship.common.errors import FailedPrecondition
from tuneship.converter.template import (
    check_same_rendering,
    generated_samples,
    parity_conversations,
)
from tuneship.quickstart.conversations import sample_conversations
from tuneship.quickstart.tiny_models import data_text
from tuneship.testing.adapters import add_generation_tags

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


def conversations() -> list[Conversation]:
    user = [Conversation(m, f"sample {i}") for i, m in enumerate(sample_conversations(12, seed=3))]
    return generated_samples() + user


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
    assert "renders generated sample 0 differently" in caught.value.message
    assert "--- original" in caught.value.message and "+++ exported" in caught.value.message


def test_template_without_tags_is_unchanged() -> None:
    plain = data_text("chatml.jinja")
    assert strip_training_tags(plain) == plain


# Like the official Gemma 2 template: a system message is refused.
REFUSES_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_parity_samples_are_the_users_and_the_generated_ones_the_template_accepts(
    tokenizer,
) -> None:
    user = [Conversation([{"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Ahoy"}], "eval.jsonl:3")]  # fmt: skip
    chosen = parity_conversations(tokenizer, REFUSES_SYSTEM, user)
    assert chosen[0].where == "eval.jsonl:3"
    assert not any(m["role"] == "system" for c in chosen for m in c.messages)
    assert len(chosen) == len(generated_samples())  # the user's, and all but the system one
    everything = parity_conversations(tokenizer, None, user)
    assert len(everything) == 1 + len(generated_samples())


def test_a_user_conversation_the_template_refuses_names_the_template_and_the_record(
    tokenizer,
) -> None:
    user = [Conversation([{"role": "system", "content": "Be terse."},
                          {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Ahoy"}], "eval.jsonl:7")]  # fmt: skip
    with pytest.raises(ChatTemplateError) as caught:
        parity_conversations(tokenizer, REFUSES_SYSTEM, user, template_name="family:gemma")
    assert caught.value.status == "INVALID_ARGUMENT"
    assert caught.value.where == "eval.jsonl:7"
    assert "family:gemma" in caught.value.message
    assert "System role not supported" in caught.value.message
