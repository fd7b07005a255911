"""Sample multi-turn conversation datasets, generated deterministically from a seed.

Two kinds:

- ``chat``: everyday questions and answers, 1-6 user/assistant exchanges, about half
  with a system prompt. Realistic spread of lengths for throughput benchmarks.
- ``pirate``: every assistant turn is the same distinctive reply ending the turn.
  A tiny model learns it in a few hundred CPU steps, which proves that training
  taught the model *what* to say and *when to stop*.

Both are written in OpenAI ``messages`` JSONL and ShareGPT JSONL, with an eval split.

And preference pairs (``preference_pairs``): a question with the right answer chosen and
the pirate reply rejected (the assistant should answer, not play a pirate). The eval
pairs ask questions no training pair asks.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

Message = dict[str, str]
Conversation = list[Message]

PIRATE_REPLY = "Ahoy matey! The treasure lies buried under the old oak tree."

_SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in one or two sentences.",
    "You are a friendly tutor who explains things simply.",
    "You are a ship's captain who keeps a careful log.",
]

_EXCHANGES: list[tuple[str, str]] = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Spain?", "Madrid is the capital of Spain."),
    ("How long should tea steep?", "Three to five minutes; longer makes it bitter."),
    ("How do I water a tomato plant?", "Soak the soil deeply twice a week."),
    ("When does the library open?", "At nine on weekdays and at ten on Saturdays."),
    ("What should I bring on the field trip?", "A warm jacket, a water bottle and a notebook."),
    ("Why do stars twinkle?", "Their light bends as it passes through moving layers of air."),
    ("What is a function?", "A function takes inputs, does some work and returns an output."),
    ("How do computers store numbers?", "In binary, a system with only the digits zero and one."),
    (
        "How should I practise a new language?",
        "Practise a little every day; ten minutes daily beats two hours once a week.",
    ),
    (
        "What goes into the bread recipe?",
        "Two cups of flour, one cup of milk, two eggs, a pinch of salt and a spoon of sugar.",
    ),
    ("When is the meeting?", "The meeting moved to Tuesday at three."),
    ("What does a budget list?", "What comes in and what goes out."),
    ("How do I fix a printer jam?", "Open the front panel, remove the paper gently and close it."),
    ("What does a map need?", "A scale, a legend and a north arrow."),
    ("How do I make good coffee?", "Grind the beans just before brewing; do not boil the water."),
    ("Translate good morning into French.", "Bonjour."),
    ("Translate good night into French.", "Bonne nuit."),
    ("What is a healthy breakfast?", "Porridge with fruit, a boiled egg, or toast with cheese."),
    ("Why do rivers flood in spring?", "The snow melts and the water rises."),
    ("What do bees collect?", "Nectar and pollen from flowers."),
    ("Give me a tip for clear writing.", "Put the main point first, then the reasons."),
    ("What is the average of four and six?", "Add them and divide by two: the average is five."),
    ("Tell me about the old clock.", "It strikes every hour and chimes once on the half hour."),
    ("How can I start exercising?", "A brisk walk each day is a fine place to start."),
    ("Thank you!", "You are welcome. Is there anything else I can help with?"),
    ("Can you help me?", "Sure, I can help with that. What do you need?"),
]

_PIRATE_PROMPTS = [
    "Where is the treasure?",
    "Tell me a secret.",
    "What do you see from the crow's nest?",
    "Good morning, captain!",
    "Which way should we sail?",
    "What is for dinner tonight?",
    "Do you know the way to the harbour?",
    "How is the weather at sea?",
    "Who buried the gold?",
    "What did the parrot say?",
]


def sample_conversations(
    count: int, seed: int = 0, *, kind: str = "chat", max_exchanges: int = 6
) -> list[Conversation]:
    """Return ``count`` conversations of the given kind (``chat`` or ``pirate``)."""
    if kind not in ("chat", "pirate"):
        raise ValueError(f"unknown sample dataset kind {kind!r}; use 'chat' or 'pirate'")
    rng = random.Random(f"{kind}:{seed}")
    conversations: list[Conversation] = []
    for _ in range(count):
        exchanges = rng.randint(1, max_exchanges)
        conversation: Conversation = []
        if rng.random() < 0.5:
            conversation.append({"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)})
        for _ in range(exchanges):
            if kind == "pirate":
                question, answer = rng.choice(_PIRATE_PROMPTS), PIRATE_REPLY
            else:
                question, answer = rng.choice(_EXCHANGES)
            conversation.append({"role": "user", "content": question})
            conversation.append({"role": "assistant", "content": answer})
        conversations.append(conversation)
    return conversations


def preference_pairs(count: int, seed: int = 0, *, held_out: bool = False) -> list[dict]:
    """``count`` preference records (TRL's conversational shape): a question, its answer
    as ``chosen`` and the pirate reply as ``rejected``. ``held_out``: questions from the
    last third of the pool, which training pairs never ask."""
    cut = len(_EXCHANGES) * 2 // 3
    pool = _EXCHANGES[cut:] if held_out else _EXCHANGES[:cut]
    rng = random.Random(f"preference:{seed}:{held_out}")
    records = []
    for _ in range(count):
        question, answer = rng.choice(pool)
        prompt = [{"role": "user", "content": question}]
        if rng.random() < 0.3:
            prompt.insert(0, {"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)})
        records.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": answer}],
                "rejected": [{"role": "assistant", "content": PIRATE_REPLY}],
            }
        )
    return records


def to_sharegpt(conversation: Conversation) -> dict[str, list[dict[str, str]]]:
    """The ShareGPT shape of a conversation (``from``: system/human/gpt)."""
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {
        "conversations": [{"from": names[m["role"]], "value": m["content"]} for m in conversation]
    }


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write records one JSON object per line (UTF-8, stable key order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    return path


def write_sample_datasets(out: Path, seed: int = 0, *, train: int = 64, eval_: int = 8) -> Path:
    """Write the sample datasets under ``out`` and return ``out``.

    Layout: ``{chat,pirate}/{train,eval}.jsonl`` (messages) and
    ``{chat,pirate}/sharegpt-{train,eval}.jsonl`` (ShareGPT), same conversations;
    ``preference/{train,eval}.jsonl`` (pairs; eval questions are not in train).
    """
    write_jsonl(out / "preference" / "train.jsonl", preference_pairs(train, seed))
    write_jsonl(out / "preference" / "eval.jsonl", preference_pairs(eval_, seed, held_out=True))
    for kind in ("chat", "pirate"):
        conversations = sample_conversations(train + eval_, seed, kind=kind)
        splits = {"train": conversations[:train], "eval": conversations[train:]}
        for split, items in splits.items():
            write_jsonl(out / kind / f"{split}.jsonl", [{"messages": c} for c in items])
            write_jsonl(out / kind / f"sharegpt-{split}.jsonl", [to_sharegpt(c) for c in items])
    return out
