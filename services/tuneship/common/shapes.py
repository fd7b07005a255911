"""A dataset record's shape, and the validated chat messages it stands for.

``common.conversations`` reads files and splits; this module turns one record (after
``dataset.columns`` renamed its fields) into OpenAI-style messages, or says what is
wrong with it (``RecordError``, named with the record's location by the reader).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

Message = dict[str, str]

ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


class RecordError(ValueError):
    """A record is invalid; the message says what is wrong."""


def to_messages(
    record: Any, shape: str = "auto", columns: Mapping[str, str] | None = None
) -> list[Message]:
    """Convert one record to validated OpenAI-style messages (``RecordError`` if invalid).
    ``columns`` maps tuneship's field names to the record's (``dataset.columns``)."""
    return _convert(record, shape, columns or {})[1]


PROMPT_RESPONSE = (
    ("prompt", "response"),
    ("question", "answer"),
    ("query", "response"),
    ("instruction", "response"),
    ("input", "output"),
)
"""The single-turn column pairs of ``prompt_response``: (user turn, assistant turn)."""

_MESSAGE_KEYS = ("role", "content")


def _convert(record: Any, shape: str, columns: Mapping[str, str]) -> tuple[str, list[Message]]:
    """(the record's shape, its messages)."""
    if isinstance(record, list):
        raise RecordError(
            "a record is a JSON object, not a list: a .jsonl file has one object per line "
            "(a JSON list of records belongs in a .json file)"
        )
    if not isinstance(record, dict):
        raise RecordError(f"a record is a JSON object, not {json.dumps(record)[:40]}")
    record = _renamed(record, columns)
    if shape == "auto":
        shape = _detect(record)
    if shape == "preference":
        from tuneship.common.preferences import as_messages  # it builds on this module

        return shape, as_messages(record)
    role, text = columns.get("role"), columns.get("content")
    try:
        if shape == "messages":
            messages = _field(record, "messages", list)
            converted = [_message(m, i, role or "role", text or "content", None)
                         for i, m in enumerate(messages)]  # fmt: skip
        elif shape == "sharegpt":
            turns = _field(record, "conversations", list)
            converted = [_message(t, i, role or "from", text or "value", _SHAREGPT_ROLES)
                         for i, t in enumerate(turns)]  # fmt: skip
        elif shape == "alpaca":
            converted = _alpaca(record)
        elif shape == "prompt_response":
            converted = _prompt_response(record)
        else:
            converted = _prompt_completion(record, role or "role", text or "content")
    except RecordError as exc:
        if role is None and text is None:
            raise
        mapped = ", ".join(f"{k} to '{columns[k]}'" for k in _MESSAGE_KEYS if k in columns)
        raise RecordError(f"{exc} (dataset.columns maps {mapped})") from exc
    _check_order(converted)
    return shape, converted


def _renamed(record: dict, columns: Mapping[str, str]) -> dict:
    """``record`` with the columns ``dataset.columns`` names under tuneship's names."""
    fields = {ours: theirs for ours, theirs in columns.items() if ours not in _MESSAGE_KEYS}
    if not fields:
        return record
    renamed = {k: v for k, v in record.items() if k not in fields and k not in fields.values()}
    for ours, theirs in fields.items():
        if theirs not in record:
            raise RecordError(f"missing column '{theirs}' (dataset.columns maps {ours} to it)")
        renamed[ours] = record[theirs]
    return renamed


def _detect(record: dict) -> str:
    """The shape of a record; the older shapes first, so their records read as before."""
    if "chosen" in record and "rejected" in record:
        return "preference"  # trained on by dpo/orpo; as a conversation: prompt + chosen
    for key, shape in (("messages", "messages"), ("conversations", "sharegpt")):
        if key in record:
            return shape
    if "completion" in record:
        return "prompt_completion"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if any(user in record and reply in record for user, reply in PROMPT_RESPONSE):
        return "prompt_response"
    if "prompt" in record:
        return "prompt_completion"
    if "instruction" in record and "response" not in record:
        return "alpaca"  # an Alpaca record missing its output says so
    halves = [f"'{a}' without '{b}'" for a, b in PROMPT_RESPONSE if a in record] + [
        f"'{b}' without '{a}'" for a, b in PROMPT_RESPONSE if b in record
    ]
    found = f" (found {halves[0]})" if halves else ""
    raise RecordError(
        "missing field: expected 'messages', 'conversations' (ShareGPT), "
        "'prompt'/'completion', 'instruction'/'output' (Alpaca) or a prompt/response "
        f"pair ({', '.join('/'.join(pair) for pair in PROMPT_RESPONSE)}){found}; "
        "map other names with dataset.columns"
    )


def _field(record: dict, name: str, kind: type) -> Any:
    if name not in record:
        raise RecordError(f"missing field '{name}'")
    if not isinstance(record[name], kind):
        raise RecordError(f"field '{name}' must be a {kind.__name__}")
    return record[name]


TOOL_ROLES = ("tool", "function", "ipython")
TOOL_KEYS = ("tool_calls", "function_call", "tool_call_id")
"""How OpenAI-style and Llama-style records carry tool calls and their results."""


def _message(item: Any, index: int, role_key: str, text_key: str, names: dict | None) -> Message:
    if not isinstance(item, dict):
        raise RecordError(f"turn {index} is not an object")
    role = _field(item, role_key, str) if role_key in item else None
    if role is None:
        raise RecordError(f"turn {index}: missing field '{role_key}'")
    if role in TOOL_ROLES or any(key in item for key in TOOL_KEYS):
        raise RecordError(
            f"turn {index}: tool calls are not supported (yet); train on conversations "
            "without tool calls and tool results, or set dataset.on_invalid: skip"
        )
    mapped = names.get(role) if names is not None else (role if role in ROLES else None)
    if mapped is None:
        known = ", ".join(names or ROLES)
        raise RecordError(f"turn {index}: unknown role {role!r} (expected one of {known})")
    if text_key not in item:
        raise RecordError(f"turn {index}: missing field '{text_key}'")
    content = item[text_key]
    if not isinstance(content, str):
        raise RecordError(f"turn {index}: '{text_key}' must be a string")
    if not content.strip():
        raise RecordError(f"turn {index} ({mapped}): empty content")
    return {"role": mapped, "content": content}


def _prompt_completion(record: dict, role: str, text: str) -> list[Message]:
    prompt, completion = record.get("prompt"), record.get("completion")
    for name, value in (("prompt", prompt), ("completion", completion)):
        if value is None:
            raise RecordError(f"missing field '{name}'")
    if isinstance(prompt, list) and isinstance(completion, list):
        turns = [*prompt, *completion]
        return [_message(m, i, role, text, None) for i, m in enumerate(turns)]
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise RecordError("'prompt' and 'completion' must both be strings or both message lists")
    return _single_turn(record, prompt, completion)


def _alpaca(record: dict) -> list[Message]:
    instruction, output = _text(record, "instruction"), _text(record, "output")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise RecordError("field 'input' must be a string")
    # Alpaca's prompt: the instruction, then its input (when there is one) as context.
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return _single_turn(record, prompt, output)


def _prompt_response(record: dict) -> list[Message]:
    pairs = [(user, reply) for user, reply in PROMPT_RESPONSE if user in record and reply in record]
    if len(pairs) > 1:
        named = " and ".join(f"{user}/{reply}" for user, reply in pairs)
        raise RecordError(
            f"ambiguous prompt/response record: it has both {named}; name the pair to "
            "train on with dataset.columns (prompt: …, response: …)"
        )
    if not pairs:
        _detect(record)  # names the half pair, or what is missing
        raise RecordError("no prompt/response pair in the record")
    user, reply = pairs[0]
    return _single_turn(record, _text(record, user), _text(record, reply))


def _text(record: dict, name: str) -> str:
    value = record.get(name)
    if value is None:
        raise RecordError(f"missing field '{name}'")
    if not isinstance(value, str):
        raise RecordError(f"field '{name}' must be a string")
    return value


def _single_turn(record: dict, prompt: str, reply: str) -> list[Message]:
    """A user turn and the assistant's reply, after the record's ``system`` if any."""
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise RecordError("field 'system' must be a string")
    turns = [{"role": "system", "content": system}] if system and system.strip() else []
    turns += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    return [_message(m, i, "role", "content", None) for i, m in enumerate(turns)]


def _check_order(messages: list[Message]) -> None:
    """An optional first system turn, then user/assistant alternating, ending on assistant."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not any(m["role"] == "assistant" for m in turns):
        raise RecordError("no assistant turn: nothing to learn from this conversation")
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            position = index + len(messages) - len(turns)
            raise RecordError(
                f"turns out of order: turn {position} is {message['role']}, expected {expected} "
                "(a first system turn, then user and assistant alternating)"
            )
    if turns[-1]["role"] != "assistant":
        raise RecordError("turns out of order: the last turn must be the assistant's")
