"""Small pieces of the serving port: names, versions, the chat stream, stop strings."""

from __future__ import annotations

import pytest
from tuneship.serving.backend import ChatStream, full_name, parse_version
from tuneship.serving.ollama import _parse_parameters
from tuneship.testing.serving import early_stop_string

pytestmark = pytest.mark.unit


def test_names_default_to_latest_like_ollama() -> None:
    assert full_name("pirate") == "pirate:latest"
    assert full_name("pirate:v1") == "pirate:v1"
    assert full_name("pirate:v1", "v2") == "pirate:v2"


def test_versions_compare_numerically() -> None:
    assert parse_version("0.30.0") > parse_version("0.5.12")
    assert parse_version("v0.29.9-rc1") == (0, 29, 9)
    assert parse_version("1.2") == (1, 2, 0)


def test_chat_stream_reports_reason_and_tokens_after_the_last_piece() -> None:
    stream = ChatStream(iter([("Hel", {}), ("lo", {}), ("", {"done_reason": "stop", "tokens": 2})]))
    assert stream.done_reason is None
    assert list(stream) == ["Hel", "lo"]
    assert (stream.done_reason, stream.tokens) == ("stop", 2)
    assert stream.first_piece_s is not None


def test_show_parameters_text_is_parsed_back() -> None:
    text = 'num_ctx                        2048\nstop     "<|im_end|>"\nstop "x y"'
    assert _parse_parameters(text) == {"num_ctx": 2048, "stop": ["<|im_end|>", "x y"]}


def test_early_stop_string_leaves_visible_text() -> None:
    answer = " Satur Satur Satur"
    stop = early_stop_string(answer)
    assert answer[: answer.index(stop)].strip()
