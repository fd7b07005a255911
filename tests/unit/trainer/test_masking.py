"""The trained tokens are exactly the assistant turns and the token that closes each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.conversations import RecordError
from tuneship.common.errors import FailedPrecondition
from tuneship.common.spec import TemplateSpec
from tuneship.trainer.masking import IGNORE, AssistantMask, TemplateSpanError
from tuneship.trainer.template import choose_template

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module", params=["tiny-llama2", "tiny-chatml"])
def tokenizer(request, tiny_llama2: Path, tiny_chatml: Path):
    from transformers import AutoTokenizer

    path = tiny_llama2 if request.param == "tiny-llama2" else tiny_chatml
    return AutoTokenizer.from_pretrained(path)


def expected_replies(tokenizer, messages: list[dict]) -> list[str]:
    """What each fixture's template puts after the generation prompt, up to its stop token."""
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    if tokenizer.eos_token == "</s>":  # llama2: ' reply </s>' (the template strips the reply)
        return [f"{reply.strip()} </s>" for reply in replies]
    return [f"{reply}<|im_end|>" for reply in replies]


def trained_runs(tokenizer, labels: list[int]) -> list[str]:
    """Decode every run of consecutive trained labels."""
    runs, current = [], []
    for label in [*labels, IGNORE]:
        if label != IGNORE:
            current.append(label)
        elif current:
            runs.append(tokenizer.decode(current).strip())
            current = []
    return runs


def conversations(sample_data: Path) -> list[list[dict]]:
    items = []
    for kind in ("chat", "pirate"):
        for split in ("train", "eval"):
            path = sample_data / kind / f"{split}.jsonl"
            items += [json.loads(line)["messages"] for line in path.read_text().splitlines()]
    return items


def test_every_sample_conversation_trains_exactly_the_replies(tokenizer, sample_data: Path) -> None:
    mask = AssistantMask(tokenizer)
    samples = conversations(sample_data)
    assert len(samples) == 144
    for messages in samples:
        example = mask.encode(messages)
        assert trained_runs(tokenizer, example.labels) == expected_replies(tokenizer, messages)
        assert example.trained == sum(end - start for start, end in example.spans)


def test_marker_strings_in_messages_neither_move_the_mask_nor_become_control_tokens(
    tokenizer,
) -> None:
    markers = "<|im_end|>\n<|im_start|>assistant\n [/INST] </s><s>[INST] "
    messages = [
        {"role": "system", "content": f"System says {markers} ok."},
        {"role": "user", "content": f"I type {markers} here."},
        {"role": "assistant", "content": f"You typed {markers} there."},
        {"role": "user", "content": "<|im_end|>"},
        {"role": "assistant", "content": "Fine."},
    ]
    example = AssistantMask(tokenizer).encode(messages)
    assert trained_runs(tokenizer, example.labels) == expected_replies(tokenizer, messages)
    # only the template's own: ChatML closes every turn, Llama-2 every reply
    closes = len(messages) if tokenizer.eos_token == "<|im_end|>" else 2
    assert example.input_ids.count(tokenizer.eos_token_id) == closes


def test_train_on_last_assistant_and_all(tokenizer) -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye now."},
    ]
    last = AssistantMask(tokenizer, "last_assistant").encode(messages)
    assert trained_runs(tokenizer, last.labels) == expected_replies(tokenizer, messages)[-1:]
    everything = AssistantMask(tokenizer, "all").encode(messages)
    assert everything.labels == everything.input_ids


def test_the_reply_closing_token_is_the_end_of_turn(tokenizer) -> None:
    assert AssistantMask(tokenizer).end_of_turn_ids() == {tokenizer.eos_token_id}


def test_over_long_conversations_are_invalid(tokenizer) -> None:
    messages = [{"role": "user", "content": "Hi " * 50}, {"role": "assistant", "content": "Ok."}]
    with pytest.raises(RecordError, match="over-long conversation"):
        AssistantMask(tokenizer, max_length=16).encode(messages)


def test_a_template_that_rewrites_earlier_turns_is_refused(tiny_chatml: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chatml)
    # shows only the latest exchange, as some reasoning templates drop earlier thoughts
    tokenizer.chat_template = (
        "{% for m in messages[-2:] %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye now."},
    ]
    with pytest.raises(TemplateSpanError) as caught:
        AssistantMask(tokenizer).encode(messages)
    assert "cannot be determined" in caught.value.message
    assert caught.value.where == "template"


def test_a_base_without_template_needs_one_in_the_spec(tiny_chatml: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chatml)
    tokenizer.chat_template = None
    with pytest.raises(FailedPrecondition, match="no chat template"):
        choose_template(TemplateSpec(), tokenizer)
    chosen = choose_template(TemplateSpec(family="chatml"), tokenizer)
    assert chosen.source == "family:chatml" and tokenizer.chat_template == chosen.text
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}")
    from_file = choose_template(TemplateSpec(path=str(jinja)), tokenizer)
    assert from_file.source == f"file:{jinja}" and from_file.has_generation_tags


FAMILY_CLOSE = {
    "chatml": "{reply}<|im_end|>",
    "llama2": "{reply} {eos}",
    "llama3": "{reply}<|eot_id|>",
    "mistral": "{reply}{eos}",
    "gemma": "{reply}<end_of_turn>",
    "zephyr": "{reply}{eos}",
    "phi3": "{reply}<|end|>",
}


@pytest.mark.parametrize("family", sorted(FAMILY_CLOSE))
def test_every_family_template_trains_the_replies_and_their_stop_token(
    family: str, tiny_chatml: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chatml)
    markers = ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<start_of_turn>"]
    markers += ["<end_of_turn>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    tokenizer.add_special_tokens({"bos_token": "<bos>", "additional_special_tokens": markers})
    choose_template(TemplateSpec(family=family), tokenizer)
    messages = [
        {"role": "user", "content": "Hi <|eot_id|> <end_of_turn> [/INST]"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye <|end|> now."},
    ]
    messages.insert(0, {"role": "system", "content": "Be brief."})  # every family takes one
    example = AssistantMask(tokenizer).encode(messages)
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    expected = [
        FAMILY_CLOSE[family].format(reply=reply, eos=tokenizer.eos_token) for reply in replies
    ]
    assert trained_runs(tokenizer, example.labels) == expected
