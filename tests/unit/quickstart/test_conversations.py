"""Sample datasets: deterministic, multi-turn, both formats carry the same conversations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.quickstart.conversations import (
    PIRATE_REPLY,
    sample_conversations,
    write_sample_datasets,
)

pytestmark = pytest.mark.unit


def test_same_seed_same_conversations_other_seed_differs() -> None:
    assert sample_conversations(20, seed=3) == sample_conversations(20, seed=3)
    assert sample_conversations(20, seed=3) != sample_conversations(20, seed=4)


def test_shape_covers_one_to_six_turns_with_and_without_system() -> None:
    conversations = sample_conversations(200, seed=0)
    turns = {sum(m["role"] == "assistant" for m in c) for c in conversations}
    assert turns == {1, 2, 3, 4, 5, 6}
    has_system = {c[0]["role"] == "system" for c in conversations}
    assert has_system == {True, False}
    for conversation in conversations:
        roles = [m["role"] for m in conversation if m["role"] != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2)


def test_pirate_replies_are_all_the_distinctive_reply() -> None:
    for conversation in sample_conversations(30, seed=1, kind="pirate"):
        replies = [m["content"] for m in conversation if m["role"] == "assistant"]
        assert replies and set(replies) == {PIRATE_REPLY}


def test_written_splits_in_both_formats(tmp_path: Path) -> None:
    write_sample_datasets(tmp_path, seed=0, train=10, eval_=3)
    for kind in ("chat", "pirate"):
        train = [json.loads(x) for x in (tmp_path / kind / "train.jsonl").read_text().splitlines()]
        share = [
            json.loads(x)
            for x in (tmp_path / kind / "sharegpt-train.jsonl").read_text().splitlines()
        ]
        evals = (tmp_path / kind / "eval.jsonl").read_text().splitlines()
        assert len(train) == len(share) == 10 and len(evals) == 3
        names = {"human": "user", "gpt": "assistant", "system": "system"}
        for record, shared in zip(train, share, strict=True):
            assert record["messages"] == [
                {"role": names[t["from"]], "content": t["value"]} for t in shared["conversations"]
            ]
