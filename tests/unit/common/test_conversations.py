"""Datasets: every accepted shape reads the same; every bad record is named and explained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.common.conversations import load_conversations
from tuneship.common.errors import InvalidInput, NotFound
from tuneship.common.spec import DatasetSpec
from tuneship.quickstart.conversations import sample_conversations, to_sharegpt, write_jsonl

pytestmark = pytest.mark.unit

GOOD = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
]


def spec(path: Path, **fields) -> DatasetSpec:
    return DatasetSpec(train=str(path), eval_fraction=0.0, **fields)


def test_messages_sharegpt_json_and_parquet_read_the_same(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    conversations = sample_conversations(12, seed=3)
    messages = write_jsonl(tmp_path / "m.jsonl", [{"messages": c} for c in conversations])
    sharegpt = write_jsonl(tmp_path / "s.jsonl", [to_sharegpt(c) for c in conversations])
    as_json = tmp_path / "m.json"
    as_json.write_text(json.dumps([{"messages": c} for c in conversations]), encoding="utf-8")
    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": c} for c in conversations]), parquet)
    for path in (messages, sharegpt, as_json, parquet):
        loaded = load_conversations(spec(path, dedupe=False))
        assert [c.messages for c in loaded.train] == conversations, path


def test_prompt_completion_pairs_become_one_exchange(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2?", "completion": "4"}])
    loaded = load_conversations(spec(path))
    assert loaded.train[0].messages == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"messages": [{"role": "narrator", "content": "x"}]}, "unknown role 'narrator'"),
        (
            {"messages": [{"role": "user", "content": " "}, GOOD[2]]},
            "turn 0 (user): empty content",
        ),
        ({"messages": GOOD[:2]}, "no assistant turn"),
        ({"messages": [GOOD[1], GOOD[2], GOOD[2]]}, "turns out of order: turn 2 is assistant"),
        ({"messages": [GOOD[2], GOOD[1]]}, "turns out of order: turn 0 is assistant"),
        ({"messages": [{"content": "x"}]}, "turn 0: missing field 'role'"),
        ({"text": "hello"}, "missing field"),
        (
            {
                "messages": [
                    GOOD[1],
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"type": "function", "function": {"name": "f", "arguments": "{}"}}
                        ],
                    },
                ]
            },
            "turn 1: tool calls are not supported (yet)",
        ),
        (
            {"messages": [GOOD[1], {"role": "tool", "content": "42", "tool_call_id": "c1"}]},
            "turn 1: tool calls are not supported (yet)",
        ),
        (
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "x"}]},
            "'bot'",
        ),
    ],
)
def test_an_invalid_record_is_named_by_file_and_line(
    tmp_path: Path, record: dict, message: str
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": GOOD}, record])
    with pytest.raises(InvalidInput) as caught:
        load_conversations(spec(path))
    assert caught.value.where == f"{path}:2"
    assert message in caught.value.message
    assert "on_invalid: skip" in (caught.value.hint or "")


def test_invalid_utf8_and_broken_json_are_reported_per_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    good = json.dumps({"messages": GOOD}).encode()
    path.write_bytes(good + b"\n" + b'{"messages": "\xff\xfe"}\n' + b"{not json\n" + good + b"\n")
    loaded = load_conversations(spec(path, on_invalid="skip", dedupe=False))
    assert len(loaded.train) == 2
    reasons = {item.where: item.reason for item in loaded.skipped}
    assert "invalid UTF-8" in reasons[f"{path}:2"]
    assert "not valid JSON" in reasons[f"{path}:3"]


def test_skip_policy_keeps_the_good_records_and_says_why_others_went(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"messages": GOOD}, {"messages": GOOD[:2]}, {"prompt": "x"}]
    )
    loaded = load_conversations(spec(path, on_invalid="skip"))
    assert [c.where for c in loaded.train] == [f"{path}:1"]
    assert [(s.where, s.reason) for s in loaded.skipped] == [
        (f"{path}:2", "no assistant turn: nothing to learn from this conversation"),
        (f"{path}:3", "missing field 'completion'"),
    ]


def test_dedupe_and_split_are_deterministic(tmp_path: Path) -> None:
    conversations = sample_conversations(40, seed=1)
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": c} for c in conversations * 2])
    first = load_conversations(DatasetSpec(train=str(path), eval_fraction=0.25, seed=7))
    again = load_conversations(DatasetSpec(train=str(path), eval_fraction=0.25, seed=7))
    other = load_conversations(DatasetSpec(train=str(path), eval_fraction=0.25, seed=8))
    unique = len({json.dumps(c) for c in conversations})
    assert first.duplicates == 80 - unique
    assert len(first.train) + len(first.eval) == unique
    assert [c.where for c in first.eval] == [c.where for c in again.eval]
    assert [c.where for c in first.eval] != [c.where for c in other.eval]
    assert first.sha256 == again.sha256 and len(first.sha256) == 64


def test_a_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_conversations(spec(tmp_path / "nope.jsonl"))


def test_errors_name_the_users_location_when_reading_a_fetched_copy(tmp_path: Path) -> None:
    copy = tmp_path / "work" / "data-train" / "train.jsonl"
    copy.parent.mkdir(parents=True)
    copy.write_text('{"messages": [{"role": "user", "content": "Hi"}]}\n')
    spec = DatasetSpec(train="s3://bucket/team/train.jsonl")
    with pytest.raises(InvalidInput) as caught:
        load_conversations(spec, {"train": copy})
    assert caught.value.where == "s3://bucket/team/train.jsonl:1"
    assert "work" not in caught.value.render()


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_a_file_given_on_the_command_line_reads_in_every_format(
    suffix: str, tmp_path: Path
) -> None:
    from tuneship.common.conversations import read_conversations

    records = [{"messages": c} for c in sample_conversations(5, seed=1)]
    path = tmp_path / f"data{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    elif suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        write_jsonl(path, records)
    loaded = read_conversations(path)
    assert [c.messages for c in loaded] == [r["messages"] for r in records]
    assert loaded[0].where.startswith(str(path))


def test_a_parquet_file_that_is_not_parquet_is_named(tmp_path: Path) -> None:
    from tuneship.common.conversations import read_conversations

    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(InvalidInput, match="not a readable Parquet file") as caught:
        read_conversations(path)
    assert caught.value.where == str(path)
