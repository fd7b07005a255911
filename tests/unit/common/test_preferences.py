"""Preference pairs: every accepted shape reads as the same pair; every bad record is
named (file:line) and explained; a stage that needs conversations gets prompt + chosen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.conversations import load_conversations
from tuneship.common.errors import InvalidInput
from tuneship.common.preferences import PreferencePair, load_preferences
from tuneship.common.spec import DatasetSpec
from tuneship.quickstart.conversations import preference_pairs, write_jsonl

pytestmark = pytest.mark.unit

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "What is the capital of France?"}
GOOD = {"role": "assistant", "content": "Paris."}
BAD = {"role": "assistant", "content": "Ahoy matey!"}
EXPECTED = PreferencePair([SYSTEM, USER], "Paris.", "Ahoy matey!", "")


def spec(path: Path, **fields) -> DatasetSpec:
    return DatasetSpec(train=str(path), eval_fraction=0.0, **fields)


def read(tmp_path: Path, *records: object, **fields) -> list[PreferencePair]:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return load_preferences(spec(path, **fields)).train


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]},  # TRL conversational
        {"prompt": [SYSTEM, USER], "chosen": GOOD, "rejected": BAD},  # one message each
        {"prompt": [SYSTEM, USER], "chosen": "Paris.", "rejected": "Ahoy matey!"},
        {"chosen": [SYSTEM, USER, GOOD], "rejected": [SYSTEM, USER, BAD]},  # implicit (HH)
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": USER["content"]},
            ],
            "chosen": {"from": "gpt", "value": "Paris."},
            "rejected": {"from": "gpt", "value": "Ahoy matey!"},
        },  # LLaMA-Factory's ShareGPT pairs
    ],
    ids=["conversational", "messages", "strings", "implicit", "sharegpt"],
)
def test_every_shape_reads_as_the_same_pair(tmp_path: Path, record: dict) -> None:
    (pair,) = read(tmp_path, record)
    assert (pair.prompt, pair.chosen, pair.rejected) == (
        EXPECTED.prompt,
        EXPECTED.chosen,
        EXPECTED.rejected,
    )
    assert pair.where.endswith("pairs.jsonl:1")


def test_a_plain_text_prompt_is_one_user_turn(tmp_path: Path) -> None:
    (pair,) = read(tmp_path, {"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."})
    assert pair.prompt == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": [USER], "chosen": [GOOD]}, "missing field 'rejected'"),
        ({"prompt": [USER], "chosen": [GOOD], "rejected": [GOOD]}, "nothing to prefer"),
        ({"prompt": [USER, GOOD], "chosen": [GOOD], "rejected": [BAD]}, "ends with an assistant"),
        ({"prompt": [USER], "chosen": [GOOD, BAD], "rejected": [BAD]}, "holds 2 messages"),
        ({"prompt": [USER], "chosen": [USER], "rejected": [BAD]}, "is a user turn"),
        ({"prompt": [GOOD, USER], "chosen": [GOOD], "rejected": [BAD]}, "turns out of order"),
        ({"chosen": [USER, GOOD], "rejected": [SYSTEM, USER, BAD]}, "differ before their last"),
        ({"chosen": [USER, GOOD, USER], "rejected": [USER, GOOD, USER]}, "last turn of 'chosen'"),
        ({"chosen": "Paris.", "rejected": "Rome."}, "add the 'prompt'"),
        ({"prompt": [], "chosen": "Paris.", "rejected": "Rome."}, "non-empty list"),
    ],
)
def test_bad_pairs_name_the_line_and_the_problem(
    tmp_path: Path, record: dict, message: str
) -> None:
    ok = {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]}
    with pytest.raises(InvalidInput) as error:
        read(tmp_path, ok, record)
    assert error.value.where.endswith("pairs.jsonl:2")
    assert message in error.value.message
    assert "on_invalid: skip" in (error.value.hint or "")


def test_skip_leaves_bad_pairs_out_and_lists_them(tmp_path: Path) -> None:
    ok = {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]}
    path = write_jsonl(tmp_path / "p.jsonl", [ok, {"prompt": [USER], "chosen": [GOOD]}])
    loaded = load_preferences(spec(path, on_invalid="skip"))
    assert len(loaded.train) == 1
    assert [s.where for s in loaded.skipped] == [f"{path}:2"]


def test_a_conversation_file_is_refused_with_what_preference_tuning_needs(
    tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [USER, GOOD]}])
    with pytest.raises(InvalidInput) as error:
        load_preferences(spec(path))
    assert error.value.where == f"{path}:1"
    assert "not a preference pair" in error.value.message
    assert "prompt, chosen and rejected" in (error.value.hint or "")


def test_pairs_dedupe_and_split_like_conversations(tmp_path: Path) -> None:
    records = preference_pairs(40, seed=1)
    path = write_jsonl(tmp_path / "p.jsonl", records + records[:5])
    loaded = load_preferences(DatasetSpec(train=str(path), eval_fraction=0.25))
    again = load_preferences(DatasetSpec(train=str(path), eval_fraction=0.25))
    unique = len({json.dumps(r, sort_keys=True) for r in records})
    assert loaded.duplicates == 45 - unique
    assert len(loaded.train) + len(loaded.eval) == unique
    assert [p.where for p in loaded.eval] == [p.where for p in again.eval]  # seeded


def test_stages_that_read_conversations_get_the_prompt_and_the_chosen_reply(
    tmp_path: Path,
) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]}]
    )
    (conversation,) = load_conversations(spec(path)).train
    assert conversation.messages == [SYSTEM, USER, GOOD]


def test_the_sample_pairs_hold_out_their_questions() -> None:
    def questions(records: list[dict]) -> set[str]:
        return {r["prompt"][-1]["content"] for r in records}

    train, held_out = preference_pairs(64), preference_pairs(16, held_out=True)
    assert questions(train).isdisjoint(questions(held_out))
    assert all(r["rejected"] != r["chosen"] for r in train + held_out)


def test_pairs_come_from_a_saved_dataset_dict_with_mapped_columns(tmp_path: Path) -> None:
    import datasets

    def rows(start: int, count: int) -> list[dict[str, str]]:
        return [
            {"question": f"q{i}?", "good": f"a{i}.", "bad": "Ahoy!"}
            for i in range(start, start + count)
        ]

    path = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows(0, 5)),
            "validation": datasets.Dataset.from_list(rows(100, 2)),
        }
    ).save_to_disk(str(path))
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    loaded = load_preferences(DatasetSpec(train=str(path), columns=columns))
    assert [p.where for p in loaded.train] == [f"{path}:train:row {i}" for i in range(5)]
    assert [(p.prompt[0]["content"], p.chosen) for p in loaded.eval] == [
        ("q100?", "a100."),
        ("q101?", "a101."),
    ]  # the dataset's own validation split is held out
    assert loaded.sources == {"train": f"{path}:train", "eval": f"{path}:validation"}

    with pytest.raises(InvalidInput) as error:
        load_preferences(DatasetSpec(train=str(path), columns={**columns, "chosen": "best"}))
    assert error.value.where == f"{path}:train:row 0"
    assert "missing column 'best' (dataset.columns maps chosen to it)" in error.value.message
