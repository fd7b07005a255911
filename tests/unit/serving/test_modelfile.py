"""Serving takes its stop tokens and context from the GGUF, and refuses one it could not stop."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuneship.common.errors import InvalidInput
from tuneship.serving.modelfile import (
    DEFAULT_MODEL_CONTEXT,
    default_parameters,
    read_servable_gguf,
)
from tuneship.testing.gguf_files import write_gguf

pytestmark = pytest.mark.unit


def test_a_gguf_without_an_eos_token_is_refused(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", eos=False)
    with pytest.raises(InvalidInput, match="no eos token") as caught:
        read_servable_gguf(path)
    assert caught.value.where == str(path)


def test_parameters_stop_at_the_end_tokens_and_cap_the_context(tmp_path: Path) -> None:
    info = read_servable_gguf(write_gguf(tmp_path / "m.gguf"))
    parameters = default_parameters(info, {"stop": "###", "temperature": 0.2})
    assert parameters["num_ctx"] == 512
    assert parameters["temperature"] == 0.2
    assert parameters["stop"][:2] == ["</s>", "<|im_end|>"] and parameters["stop"][-1] == "###"


def test_a_header_without_a_context_length_gets_the_default(tmp_path: Path) -> None:
    info = read_servable_gguf(write_gguf(tmp_path / "m.gguf", context_length=None))
    assert default_parameters(info)["num_ctx"] == DEFAULT_MODEL_CONTEXT
