"""Jinja → Go template translation: derived pieces, refusals, the linear form's parity."""

from __future__ import annotations

import pytest
from tuneship.common.chat_templates import FAMILIES, family_template
from tuneship.common.errors import InvalidInput
from tuneship.quickstart.tiny_models import data_text
from tuneship.serving.gotemplate import (
    derive_shape,
    render_linear,
    sample_conversations,
    to_go_template,
)
from tuneship.serving.jinja_render import TemplateRaised, render_jinja

pytestmark = pytest.mark.unit

CHATML = data_text("chatml.jinja")
LLAMA2 = data_text("llama2.jinja")


def test_chatml_pieces_are_derived_by_rendering() -> None:
    shape = derive_shape(CHATML)
    assert shape.user_prefix == "<|im_start|>user\n"
    assert shape.assistant_suffix == "<|im_end|>\n"
    assert shape.generation_prompt == "<|im_start|>assistant\n"
    assert shape.system_prefix == "<|im_start|>system\n"
    assert shape.system_to_user == "<|im_end|>\n<|im_start|>user\n"


def test_llama2_folds_the_system_prompt_into_the_first_user_turn() -> None:
    shape = derive_shape(LLAMA2, bos_token="<s>", eos_token="</s>")
    assert shape.system_prefix == "<s>[INST] <<SYS>>\n"
    assert shape.system_to_user == "\n<</SYS>>\n\n"
    assert shape.assistant_suffix == " </s>"
    assert shape.generation_prompt == ""


@pytest.mark.parametrize("family", FAMILIES)
def test_linear_form_renders_what_jinja_renders(family: str) -> None:
    jinja = family_template(family)
    go = to_go_template(jinja, bos_token="<s>", eos_token="</s>")
    for messages, generation in sample_conversations():
        if messages[0]["role"] == "system" and go.shape.system_prefix is None:
            continue
        expected = render_jinja(
            jinja, messages, add_generation_prompt=generation, bos_token="<s>", eos_token="</s>"
        )
        assert render_linear(go.shape, messages) == expected


def test_a_template_without_a_system_role_says_so() -> None:
    # Gemma 1 and 2 style: a system message is refused (Gemma 3 folds it into the first
    # user turn, as the bundled gemma family does).
    jinja = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "<turn {{ 'model' if m['role'] == 'assistant' else 'user' }}>{{ m['content'] }}</turn>"
        "{% endfor %}{% if add_generation_prompt %}<turn model>{% endif %}"
    )
    go = to_go_template(jinja, bos_token="<bos>", eos_token="<eos>")
    assert go.shape.system_prefix is None
    assert any("no system role" in w for w in go.warnings)
    assert "$.System" not in go.text


def test_trimming_templates_are_flagged() -> None:
    assert any("trims" in w for w in to_go_template(LLAMA2, bos_token="<s>").warnings)
    assert to_go_template(CHATML).warnings == ()


@pytest.mark.parametrize(
    ("jinja", "reason"),
    [
        (
            "{% for m in messages %}<turn {{ loop.index }}>{{ m['content'] }}{% endfor %}",
            "share one prefix",
        ),
        (
            "{% for m in messages %}{% if loop.index0 == 4 %}(later){% endif %}"
            "[{{ m['role'] }}]{{ m['content'] }}{% endfor %}",
            "depends on content or position",
        ),
        (
            "{% for m in messages %}{% if 'secret' in m['content'] %}!{% endif %}"
            "[{{ m['role'] }}]{{ m['content'] }}{% endfor %}",
            "",
        ),
        ("{% for m in messages %}{{ m['content'] }}{{ m['content'] }}{% endfor %}", "exactly once"),
        (
            "{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}"
            "{% endfor %}",
            "generation",
        ),
    ],
)
def test_templates_it_cannot_express_are_refused_with_a_reason(jinja: str, reason: str) -> None:
    try:
        go = to_go_template(jinja)
    except InvalidInput as exc:
        assert "cannot translate" in exc.message
        assert reason in exc.message
        assert exc.where == "tokenizer.chat_template"
        assert exc.hint and "template_mode: jinja" in exc.hint
        return
    # A content-dependent branch that the placeholders never trigger is still linear for
    # every conversation the check renders; the translation must then match them all.
    for messages, generation in sample_conversations():
        assert render_linear(go.shape, messages) == render_jinja(
            jinja, messages, add_generation_prompt=generation
        )


def test_go_text_escapes_literal_braces() -> None:
    jinja = "{% for m in messages %}{{ '{{' }}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    go = to_go_template(jinja)
    assert '{{ "{{assistant: " }}' in go.text


def test_the_check_reports_templates_that_refuse_conversations() -> None:
    jinja = "{{ raise_exception('no') }}"
    with pytest.raises(InvalidInput, match="refuses"):
        to_go_template(jinja)
    with pytest.raises(TemplateRaised):
        render_jinja(jinja, [], add_generation_prompt=True)
