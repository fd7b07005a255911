"""The bundled chat templates render each family's documented format."""

from __future__ import annotations

import jinja2
import pytest
from tuneship.common.chat_templates import FAMILIES, family_template
from tuneship.common.errors import InvalidInput

pytestmark = pytest.mark.unit

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Bye now."},
]

EXPECTED = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
    "<|im_start|>assistant\nBye now.<|im_end|>\n",
    "llama2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s>"
    "<s>[INST] Bye [/INST] Bye now. </s>",
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nBye now.<|eot_id|>",
    "mistral": "<s>[INST] Be brief.\n\nHi [/INST]Hello.</s>[INST] Bye [/INST]Bye now.</s>",
    "zephyr": "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello.</s>\n"
    "<|user|>\nBye</s>\n<|assistant|>\nBye now.</s>\n",
    "phi3": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n"
    "<|user|>\nBye<|end|>\n<|assistant|>\nBye now.<|end|>\n",
}


def render(template: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages,
        bos_token="<s>",
        eos_token="</s>",
        add_generation_prompt=add_generation_prompt,
    )


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_family_renders_its_documented_format(family: str) -> None:
    assert render(family_template(family), CONVERSATION) == EXPECTED[family]


def test_gemma_uses_model_turns_and_refuses_a_system_message() -> None:
    template = family_template("gemma")
    text = render(template, CONVERSATION[1:3], add_generation_prompt=False)
    assert (
        text
        == "<s><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
    )
    with pytest.raises(jinja2.TemplateError, match="System role not supported"):
        render(template, CONVERSATION)


@pytest.mark.parametrize("family", ["llama2", "mistral", "gemma", "zephyr", "phi3", "llama3"])
def test_family_refuses_an_unknown_role(family: str) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "narrator", "content": "x"}]
    with pytest.raises(jinja2.TemplateError):
        render(family_template(family), messages)


@pytest.mark.parametrize("family", ["llama2", "mistral", "gemma"])
def test_family_refuses_roles_out_of_order(family: str) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi again"}]
    with pytest.raises(jinja2.TemplateError, match="alternate"):
        render(family_template(family), messages)


def test_every_family_has_a_generation_prompt_or_none_needed() -> None:
    for family in FAMILIES:
        prompt = render(family_template(family), CONVERSATION[1:2], add_generation_prompt=True)
        assert prompt.startswith(render(family_template(family), CONVERSATION[1:2]))


def test_unknown_family_lists_the_known_names() -> None:
    with pytest.raises(InvalidInput) as caught:
        family_template("chatlm")
    assert "chatml" in caught.value.render() and "template.family" in caught.value.render()
