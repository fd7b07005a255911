"""Alpaca, prompt/response pairs and ``dataset.columns``: read as conversations, every
problem named with its record and both names when a mapping is involved."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from tuneship.common.conversations import load_conversations
from tuneship.common.errors import InvalidInput
from tuneship.common.spec import DatasetSpec
from tuneship.quickstart.conversations import write_jsonl

pytestmark = pytest.mark.unit


def read(tmp_path: Path, records: list[dict], **fields) -> list[list[dict[str, str]]]:
    path = write_jsonl(tmp_path / "data.jsonl", records)
    loaded = load_conversations(DatasetSpec(train=str(path), eval_fraction=0.0, **fields))
    return [c.messages for c in loaded.train]


def refused(tmp_path: Path, records: list[dict], **fields) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        read(tmp_path, records, **fields)
    return caught.value


def exchange(user: str, reply: str, system: str | None = None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def test_alpaca_appends_the_input_to_the_instruction_after_a_blank_line(tmp_path: Path) -> None:
    records = [
        {"instruction": "Translate to French.", "input": "cheese", "output": "fromage"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"instruction": "Name a colour.", "output": "Blue.", "system": "Be brief."},
    ]
    assert read(tmp_path, records, dedupe=False) == [
        exchange("Translate to French.\n\ncheese", "fromage"),
        exchange("Say hi.", "Hi!"),
        exchange("Name a colour.", "Blue.", system="Be brief."),
    ]
    assert read(tmp_path, records, format="alpaca")[0] == exchange(
        "Translate to French.\n\ncheese", "fromage"
    )


@pytest.mark.parametrize(
    ("user", "reply"),
    [("prompt", "response"), ("question", "answer"), ("query", "response"),
     ("instruction", "response"), ("input", "output")],
)  # fmt: skip
def test_each_documented_prompt_response_pair_is_one_exchange(
    tmp_path: Path, user: str, reply: str
) -> None:
    assert read(tmp_path, [{user: "2+2?", reply: "4", "id": 7}]) == [exchange("2+2?", "4")]


def test_older_shapes_keep_priority_over_the_new_ones(tmp_path: Path) -> None:
    # prompt/completion stays prompt/completion even with a 'response' column beside it.
    assert read(tmp_path, [{"prompt": "a?", "completion": "b", "response": "x"}]) == [
        exchange("a?", "b")
    ]
    # A lone 'prompt' is still a prompt/completion record missing its completion.
    assert "missing field 'completion'" in refused(tmp_path, [{"prompt": "a?"}]).message


def test_two_pairs_in_one_record_are_ambiguous_and_named(tmp_path: Path) -> None:
    error = refused(tmp_path, [{"question": "a?", "answer": "b", "query": "c?", "response": "d"}])
    assert error.where.endswith("data.jsonl:1")
    assert "ambiguous" in error.message
    assert "question/answer and query/response" in error.message


def test_half_a_pair_says_which_half_is_missing(tmp_path: Path) -> None:
    error = refused(tmp_path, [{"question": "a?", "reply": "b"}])
    assert "'question' without 'answer'" in error.message
    assert "dataset.columns" in error.message


def test_a_file_of_alpaca_records_refuses_a_prompt_response_record(tmp_path: Path) -> None:
    records = [{"instruction": "a", "output": "b"}, {"question": "c?", "answer": "d"}]
    error = refused(tmp_path, records)
    assert error.where.endswith("data.jsonl:2")
    assert "a prompt_response record in a file of alpaca records" in error.message


def test_columns_map_other_names_onto_each_shape(tmp_path: Path) -> None:
    assert read(
        tmp_path, [{"question_text": "a?", "best_answer": "b", "prompt": "ignored"}],
        columns={"prompt": "question_text", "completion": "best_answer"},
    ) == [exchange("a?", "b")]  # fmt: skip
    dialog = [{"speaker": "user", "text": "a?"}, {"speaker": "assistant", "text": "b"}]
    assert read(
        tmp_path, [{"dialog": dialog}],
        columns={"messages": "dialog", "role": "speaker", "content": "text"},
    ) == [exchange("a?", "b")]  # fmt: skip
    assert read(
        tmp_path, [{"task": "a?", "context": "x", "target": "b"}],
        columns={"instruction": "task", "input": "context", "output": "target"}, format="alpaca",
    ) == [exchange("a?\n\nx", "b")]  # fmt: skip


def test_a_mapped_column_missing_in_a_record_names_both_names(tmp_path: Path) -> None:
    records = [{"q": "a?", "a": "b"}, {"q": "c?", "answer_text": "d"}]
    error = refused(tmp_path, records, columns={"prompt": "q", "response": "a"})
    assert error.where.endswith("data.jsonl:2")
    assert "missing column 'a' (dataset.columns maps response to it)" in error.message
    dialog = [{"speaker": "user", "text": "a?"}, {"role": "assistant", "text": "b"}]
    error = refused(
        tmp_path, [{"messages": dialog}], columns={"role": "speaker", "content": "text"}
    )
    assert "turn 1: missing field 'speaker' (dataset.columns maps role to 'speaker', " in (
        error.message
    )


def test_unknown_column_names_are_spec_errors_with_a_close_match() -> None:
    with pytest.raises(ValidationError) as caught:
        DatasetSpec(train="x.jsonl", columns={"promt": "question"})
    assert "'promt' is not a field tuneship reads; did you mean 'prompt'?" in str(caught.value)
    with pytest.raises(ValidationError, match="the column for 'prompt' is empty"):
        DatasetSpec(train="x.jsonl", columns={"prompt": " "})
