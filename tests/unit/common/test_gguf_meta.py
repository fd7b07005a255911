"""A GGUF header reads back as what was written: vocabulary, special tokens, template,
tensors; a file that is not a GGUF is refused with the path."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuneship.common.errors import InvalidInput
from tuneship.common.gguf_meta import read_gguf
from tuneship.testing.gguf_files import CHAT_TEMPLATE, TOKENS, write_gguf

pytestmark = pytest.mark.unit


def test_the_header_reads_back(tmp_path: Path) -> None:
    info = read_gguf(write_gguf(tmp_path / "m.gguf"))
    assert (info.architecture, info.name, info.license) == ("llama", "tiny-pirate", "apache-2.0")
    assert (info.file_type, info.context_length, info.add_bos) == (1, 512, True)
    assert info.n_tokens == len(TOKENS) == info.embedding_rows == info.output_rows
    assert info.special_ids == {"bos": 1, "eos": 2, "eot": 3}
    assert (info.bos_token, info.eos_token, info.eot_token) == ("<s>", "</s>", "<|im_end|>")
    assert info.end_tokens() == ["</s>", "<|im_end|>"]
    assert info.special_tokens == {"<s>", "</s>", "<|im_end|>", "<extra>"}
    assert info.chat_template == CHAT_TEMPLATE
    assert info.metadata["general.name"] == "tiny-pirate"
    assert info.tensor_types == {"F16": 1, "F32": 1}
    assert info.bits_per_weight == 24.0  # one f16 and one f32 matrix of the same shape
    assert info.size_bytes == (tmp_path / "m.gguf").stat().st_size
    assert info.placeholder_scores


def test_absent_fields_read_as_missing(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf", eos=False, eot=False, context_length=None, placeholder_scores=False
    )
    info = read_gguf(path)
    assert info.special_ids == {"bos": 1}
    assert (info.eos_token, info.eot_token, info.end_tokens()) == ("", "", [])
    assert info.context_length is None
    assert not info.placeholder_scores


def test_a_file_that_is_not_a_gguf_is_invalid_input(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a gguf at all")
    with pytest.raises(InvalidInput) as caught:
        read_gguf(path)
    assert caught.value.where == str(path)
