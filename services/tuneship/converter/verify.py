"""Every GGUF is loaded by llama.cpp, answers a chat turn, and formats chats like HF does.

Template parity: for sample conversations, the prompt llama-server renders from the
GGUF's template and tokenizes the way it does for a chat request must be exactly the
ids that the Hugging Face tokenizer's ``apply_chat_template`` produces (the ids the
model was trained on). A difference fails with the first differing position and the
tokens around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.common.chat import chat_ids, inference_template
from tuneship.common.conversations import Conversation
from tuneship.common.errors import FailedPrecondition
from tuneship.common.events import EventSink, Log
from tuneship.common.llama_server import LlamaServer
from tuneship.common.toolchain import Toolchain
from tuneship.converter.template import parity_conversations

STAGE = "verify"


@dataclass(frozen=True)
class VerifyResult:
    """What llama.cpp did with one GGUF."""

    gguf: Path
    answer: str
    parity_conversations: int
    prompt_tokens_per_s: float
    generation_tokens_per_s: float


def prompt_conversations(conversations: list[Conversation]) -> list[Conversation]:
    """Each conversation cut after its last user turn (a prompt awaiting the answer)."""
    prompts = []
    for conversation in conversations:
        messages = conversation.messages
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
        if last_user >= 0:
            prompts.append(Conversation(messages[: last_user + 1], conversation.where))
    return prompts


def verify(
    gguf: Path,
    model: Path,
    *,
    toolchain: Toolchain,
    events: EventSink,
    work: Path,
    conversations: list[Conversation] | None = None,
    context: int = 1024,
) -> VerifyResult:
    """Load ``gguf`` in llama-server, chat once, and check template parity against ``model``.

    ``model`` is the HF directory the GGUF came from (its tokenizer is the reference);
    parity is checked on up to 8 of ``conversations`` (the user's, held-out first) and on
    the generated variants the template accepts. Raises ``FailedPrecondition`` when the
    model does not load, answers nothing, or a conversation tokenizes differently;
    ``ChatTemplateError`` when the template refuses one of the user's conversations.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    template = inference_template(model)
    samples = prompt_conversations(
        parity_conversations(tokenizer, template, list(conversations or []))
    )
    log = work / f"{gguf.stem}.server.log"
    server = LlamaServer(toolchain.binary("llama-server"), gguf, log, context=context)
    with server:
        rendered = []
        for conversation in samples:
            expected = chat_ids(tokenizer, conversation.messages, template=template,
                                generation_prompt=True, where=conversation.where)  # fmt: skip
            prompt = server.apply_template(conversation.messages)
            rendered.append(prompt)
            got = [int(t) for t in server.post(
                "/tokenize", {"content": prompt, "add_special": True, "parse_special": True}
            )["tokens"]]  # fmt: skip
            if got != expected:
                raise FailedPrecondition(
                    f"template parity failed for {gguf.name}, {conversation.where}:\n"
                    + parity_diff(tokenizer, expected, got),
                    where=str(gguf),
                    hint="llama.cpp formats or tokenizes this chat differently from the "
                    "training tokenizer; `tuneship doctor` on the GGUF shows its tokenizer flags",
                )
        answer = server.chat(samples[0].messages, max_tokens=32, temperature=0)
        if answer.get("usage", {}).get("completion_tokens", 0) < 1:
            raise FailedPrecondition(f"{gguf.name} loaded but generated nothing", where=str(gguf))
        prompt_tps, generation_tps = measure_speed(server, "".join(rendered), context)
    text = str(answer["choices"][0]["message"].get("content") or "")
    events.emit(Log(STAGE, f"{gguf.name}: loads, answers, parity ok on {len(samples)} chats"))
    return VerifyResult(gguf, text, len(samples), prompt_tps, generation_tps)


def measure_speed(
    server: LlamaServer, text: str, context: int, runs: int = 3
) -> tuple[float, float]:
    """Best-of-``runs`` prompt and generation tokens/s (a shared machine only slows runs down).

    The prompt is ``text`` cut to half the context; 64 tokens are generated past eos.
    """
    ids = server.tokenize(text)[: context // 2]
    best = (0.0, 0.0)
    for _ in range(runs):
        done = server.post("/completion", {
            "prompt": ids, "n_predict": 64, "ignore_eos": True, "cache_prompt": False,
            "temperature": 0,
        })  # fmt: skip
        timings = done.get("timings", {})
        best = (
            max(best[0], float(timings.get("prompt_per_second", 0.0))),
            max(best[1], float(timings.get("predicted_per_second", 0.0))),
        )
    return best


def parity_diff(tokenizer: Any, expected: list[int], got: list[int], around: int = 4) -> str:
    """A readable account of where two id sequences part ways."""
    first = next(
        (i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b),
        min(len(expected), len(got)),
    )
    lo = max(0, first - around)

    def show(ids: list[int]) -> str:
        window = ids[lo : first + around + 1]
        pieces = tokenizer.convert_ids_to_tokens(window)
        return " ".join(f"{i}:{p!r}" for i, p in zip(window, pieces, strict=True))

    return (
        f"  first difference at token {first} (HF {len(expected)} ids, llama.cpp {len(got)})\n"
        f"  HF       : {show(expected)}\n"
        f"  llama.cpp: {show(got)}"
    )
