"""The bundled chat templates render what their families' official templates render.

The expected strings are what each family's official Hugging Face template renders for
the same conversations, through the same renderer (transformers' own, as
``apply_chat_template`` uses it: sandboxed Jinja with ``trim_blocks``/``lstrip_blocks``,
``raise_exception``, the family's real ``bos_token``/``eos_token``; training-only
``{% generation %}`` tags render nothing of their own). The two places where a bundled
template renders something else on purpose are listed in ``DELIBERATE``, with why;
docs/training.md has the same table for users.
"""

from __future__ import annotations

import jinja2
import pytest
from transformers.utils.chat_template_utils import render_jinja_template
from tuneship.common.chat_templates import FAMILIES, family_template
from tuneship.common.errors import InvalidInput

pytestmark = pytest.mark.unit

Message = dict[str, str]

SYSTEM = {"role": "system", "content": "Be brief."}
TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Bye now."},
]
# Whitespace at the edges of messages shows which parts each family trims.
SPACED = [
    {"role": "system", "content": " Be brief.\n"},
    {"role": "user", "content": "\nHi "},
    {"role": "assistant", "content": " Hello. "},
]
CASES: dict[str, tuple[list[Message], bool]] = {
    "system_chat": ([SYSTEM, *TURNS], False),
    "chat": (TURNS, False),
    "system_prompt": ([SYSTEM, *TURNS[:3]], True),
    "prompt": (TURNS[:1], True),
    "spaced": (SPACED, False),
}

# (bos_token, eos_token) as each family's tokenizer_config.json sets them.
TOKENS = {
    "chatml": ("<s>", "<|im_end|>"),
    "gemma": ("<bos>", "<eos>"),
    "llama2": ("<s>", "</s>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "mistral": ("<s>", "</s>"),
    "phi3": ("<s>", "<|endoftext|>"),
    "zephyr": ("<s>", "</s>"),
}

OFFICIAL: dict[str, dict[str, str]] = {
    # teknium/OpenHermes-2.5-Mistral-7B, tokenizer_config.json (plain ChatML, no default
    # system prompt). Qwen/Qwen2.5-*-Instruct renders the same whenever the conversation
    # has a system message; without one Qwen adds "You are Qwen, created by Alibaba
    # Cloud. You are a helpful assistant." as the system turn.
    "chatml": {
        "system_chat": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\nBye now.<|im_end|>\n",
        "chat": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nBye now.<|im_end|>\n",
        "system_prompt": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n",
        "prompt": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "spaced": "<|im_start|>system\n Be brief.\n<|im_end|>\n<|im_start|>user\n\nHi <|im_end|>\n"
        "<|im_start|>assistant\n Hello. <|im_end|>\n",
    },
    # google/gemma-3-*-it, chat_template (tokenizer_config.json): the system message
    # opens the first user turn, untrimmed, then a blank line; every turn is trimmed.
    "gemma": {
        "system_chat": "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\nBye now.<end_of_turn>\n",
        "chat": "<bos><start_of_turn>user\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\nBye now.<end_of_turn>\n",
        "system_prompt": "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n",
        "prompt": "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
        "spaced": "<bos><start_of_turn>user\n Be brief.\n\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n",
    },
    # meta-llama/Llama-2-7b-chat-hf, tokenizer_config.json: BOS before every [INST]; the
    # <<SYS>> block is joined to the first user message and the whole is stripped once.
    "llama2": {
        "system_chat": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s>"
        "<s>[INST] Bye [/INST] Bye now. </s>",
        "chat": "<s>[INST] Hi [/INST] Hello. </s><s>[INST] Bye [/INST] Bye now. </s>",
        "system_prompt": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s>"
        "<s>[INST] Bye [/INST]",
        "prompt": "<s>[INST] Hi [/INST]",
        "spaced": "<s>[INST] <<SYS>>\n Be brief.\n\n<</SYS>>\n\n\nHi [/INST] Hello. </s>",
    },
    # meta-llama/Meta-Llama-3-8B-Instruct, tokenizer_config.json. Llama 3.1 and later
    # render the same turns but always open with a system header holding "Cutting
    # Knowledge Date: December 2023" and "Today Date: ..." (3.2 takes the date from the
    # clock); see docs/training.md for why the family follows Llama 3.
    "llama3": {
        "system_chat": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief."
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nBye now.<|eot_id|>",
        "chat": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nBye now.<|eot_id|>",
        "system_prompt": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief."
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "prompt": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "spaced": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief."
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>",
    },
    # mistralai/Mistral-7B-Instruct-v0.3, tokenizer_config.json: the system message goes
    # before the *last* user message, so it is left out when the conversation ends on
    # an assistant turn.
    "mistral": {
        "system_chat": "<s>[INST] Hi[/INST] Hello.</s>[INST] Bye[/INST] Bye now.</s>",
        "chat": "<s>[INST] Hi[/INST] Hello.</s>[INST] Bye[/INST] Bye now.</s>",
        "system_prompt": "<s>[INST] Hi[/INST] Hello.</s>[INST] Be brief.\n\nBye[/INST]",
        "prompt": "<s>[INST] Hi[/INST]",
        "spaced": "<s>[INST] \nHi [/INST] Hello.</s>",
    },
    # microsoft/Phi-3.5-mini-instruct, tokenizer_config.json: no BOS; an empty system
    # message is left out; without the generation prompt the text ends with EOS.
    "phi3": {
        "system_chat": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
        "Hello.<|end|>\n<|user|>\nBye<|end|>\n<|assistant|>\nBye now.<|end|>\n<|endoftext|>",
        "chat": "<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n<|user|>\nBye<|end|>\n"
        "<|assistant|>\nBye now.<|end|>\n<|endoftext|>",
        "system_prompt": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello."
        "<|end|>\n<|user|>\nBye<|end|>\n<|assistant|>\n",
        "prompt": "<|user|>\nHi<|end|>\n<|assistant|>\n",
        "spaced": "<|system|>\n Be brief.\n<|end|>\n<|user|>\n\nHi <|end|>\n<|assistant|>\n Hello. "
        "<|end|>\n<|endoftext|>",
    },
    # HuggingFaceH4/zephyr-7b-beta, tokenizer_config.json: no BOS; EOS and a newline
    # close every turn.
    "zephyr": {
        "system_chat": "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello.</s>\n"
        "<|user|>\nBye</s>\n<|assistant|>\nBye now.</s>\n",
        "chat": "<|user|>\nHi</s>\n<|assistant|>\nHello.</s>\n<|user|>\nBye</s>\n"
        "<|assistant|>\nBye now.</s>\n",
        "system_prompt": "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello.</s>\n"
        "<|user|>\nBye</s>\n<|assistant|>\n",
        "prompt": "<|user|>\nHi</s>\n<|assistant|>\n",
        "spaced": "<|system|>\n Be brief.\n</s>\n<|user|>\n\nHi </s>\n"
        "<|assistant|>\n Hello. </s>\n",
    },
}

# Where a bundled template renders something else on purpose. Both official behaviours
# render a turn differently depending on what follows it, which leaves the trained
# tokens unknowable (tuneship derives them from prefix renders) and, for Mistral, drops
# the system prompt from every training example.
DELIBERATE: dict[tuple[str, str], str] = {
    # The system message opens the first user turn (as Mistral's v0.1/v0.2 templates
    # put it), so it stays put as the conversation grows.
    ("mistral", "system_chat"): "<s>[INST] Be brief.\n\nHi[/INST] Hello.</s>"
    "[INST] Bye[/INST] Bye now.</s>",
    ("mistral", "system_prompt"): "<s>[INST] Be brief.\n\nHi[/INST] Hello.</s>[INST] Bye[/INST]",
    ("mistral", "spaced"): "<s>[INST]  Be brief.\n\n\n\nHi [/INST] Hello.</s>",
    # No EOS after the last turn: <|end|> is what closes a reply (and is trained).
    ("phi3", "system_chat"): "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    "Hello.<|end|>\n<|user|>\nBye<|end|>\n<|assistant|>\nBye now.<|end|>\n",
    ("phi3", "chat"): "<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n<|user|>\nBye<|end|>\n"
    "<|assistant|>\nBye now.<|end|>\n",
    ("phi3", "spaced"): "<|system|>\n Be brief.\n<|end|>\n<|user|>\n\nHi <|end|>\n<|assistant|>\n"
    " Hello. <|end|>\n",
}


def render(family: str, messages: list[Message], add_generation_prompt: bool = False) -> str:
    bos, eos = TOKENS[family]
    rendered, _ = render_jinja_template(
        [messages],
        chat_template=family_template(family),
        add_generation_prompt=add_generation_prompt,
        bos_token=bos,
        eos_token=eos,
    )
    return str(rendered[0])


def test_every_bundled_family_has_its_official_renderings() -> None:
    assert FAMILIES == ("chatml", "gemma", "llama2", "llama3", "mistral", "phi3", "zephyr")
    assert set(OFFICIAL) == set(TOKENS) == set(FAMILIES)
    assert all(set(cases) == set(CASES) for cases in OFFICIAL.values())
    assert all(DELIBERATE[key] != OFFICIAL[key[0]][key[1]] for key in DELIBERATE)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("family", FAMILIES)
def test_family_renders_what_the_official_template_renders(family: str, case: str) -> None:
    messages, add_generation_prompt = CASES[case]
    expected = DELIBERATE.get((family, case), OFFICIAL[family][case])
    assert render(family, messages, add_generation_prompt) == expected


@pytest.mark.parametrize("system", [False, True], ids=["no-system", "system"])
@pytest.mark.parametrize("family", FAMILIES)
def test_each_turn_renders_the_same_whatever_follows(family: str, system: bool) -> None:
    """What the trainer's mask relies on: the prompt for reply i, then reply i, then the
    whole conversation, each a prefix of the next."""
    messages = [SYSTEM, *TURNS] if system else TURNS
    full = render(family, messages)
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = render(family, messages[:i], add_generation_prompt=True)
            turn = render(family, messages[: i + 1])
            assert turn.startswith(prompt) and full.startswith(turn)


def test_gemma_folds_a_system_message_into_the_first_user_turn() -> None:
    text = render("gemma", [SYSTEM, TURNS[0]], add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "chatml"])
def test_family_refuses_a_role_it_has_no_place_for(family: str) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "narrator", "content": "x"}]
    with pytest.raises(jinja2.TemplateError):
        render(family, messages)


@pytest.mark.parametrize("family", ["gemma", "llama2", "mistral"])
def test_family_refuses_roles_out_of_order(family: str) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi again"}]
    with pytest.raises(jinja2.TemplateError, match="alternate"):
        render(family, messages)


def test_family_names_ignore_case_and_unknown_names_list_the_known_ones() -> None:
    assert family_template(" Gemma ") == family_template("gemma")
    with pytest.raises(InvalidInput) as caught:
        family_template("chatlm")
    assert caught.value.where == "template.family"
    assert all(family in caught.value.render() for family in FAMILIES)
