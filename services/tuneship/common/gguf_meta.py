"""What a GGUF file says about itself: architecture, vocabulary, special tokens, chat
template and tensors. The export stage checks and reports these; serving takes the
template and the end tokens from them.

Read with the ``gguf`` package's memory-mapped reader: nothing but the header is
paged in, whatever the size of the file.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneship.common.errors import InvalidInput

SPECIAL_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "pad": "tokenizer.ggml.padding_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
}

# llama.cpp token types (gguf.TokenType): 3 = control, 4 = user defined.
_SPECIAL_TYPES = (3, 4)


@dataclass(frozen=True)
class GgufInfo:
    """The parts of a GGUF header tuneship reads. Token texts are "" when the header
    names no such token (or an id past the end of the vocabulary)."""

    path: Path
    architecture: str
    name: str | None
    file_type: int | None
    n_tokens: int
    embedding_rows: int | None
    output_rows: int | None
    vocab_size_key: int | None
    special_ids: dict[str, int]
    add_bos: bool | None
    chat_template: str | None
    placeholder_scores: bool
    context_length: int | None = None
    license: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    eot_token: str = ""
    special_tokens: frozenset[str] = field(default_factory=frozenset)
    """Texts of the control and user-defined tokens."""
    tensor_types: dict[str, int] = field(default_factory=dict)
    n_params: int = 0
    tensor_bytes: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    """Every ``general.*`` key with a readable value."""

    @property
    def bits_per_weight(self) -> float:
        """Bits of tensor data per parameter (what the quantization type costs)."""
        return self.tensor_bytes * 8 / self.n_params if self.n_params else 0.0

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def end_tokens(self) -> list[str]:
        """EOS and end-of-turn token texts, without duplicates, in that order."""
        found = [t for t in (self.eos_token, self.eot_token) if t]
        return list(dict.fromkeys(found))


def read_gguf(path: Path) -> GgufInfo:
    """Read a GGUF header; ``InvalidInput`` when the file is not a readable GGUF.

    A field that is absent or cannot be decoded reads as missing (None, "" or 0).
    """
    from gguf import GGUFReader

    size = path.stat().st_size
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        what = "is empty (0 bytes)" if size == 0 else f"starts with {magic!r}, not b'GGUF'"
        raise InvalidInput(
            f"not a GGUF file: it {what}", where=str(path),
            hint="pass a .gguf written by the export stage (`tuneship export`)",
        )  # fmt: skip
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, struct.error, IndexError) as exc:
        # gguf-py says "cannot reshape array..." when the data ends before its header does.
        raise InvalidInput(
            f"the GGUF is truncated or damaged: {size:,} bytes, shorter than or different "
            f"from what its header describes ({exc})",
            where=str(path),
            hint="the file was cut short (an interrupted copy or download?): copy or export "
            "it again",
        ) from exc
    value = _field_reader(reader)
    arch = str(value("general.architecture") or "")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens.data) if tokens is not None else 0
    shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    embd, out = shapes.get("token_embd.weight"), shapes.get("output.weight")
    specials = {name: int(v) for name, key in SPECIAL_KEYS.items() if (v := value(key)) is not None}

    def text(name: str) -> str:
        index = specials.get(name)
        if tokens is None or index is None or not 0 <= index < n_tokens:
            return ""
        return str(tokens.contents(index))

    metadata = {
        k: value(k) for k in reader.fields if k.startswith("general.") and value(k) is not None
    }
    return GgufInfo(
        path=path,
        architecture=arch,
        name=value("general.name"),
        file_type=value("general.file_type"),
        n_tokens=n_tokens,
        embedding_rows=embd[1] if embd and len(embd) > 1 else None,
        output_rows=out[1] if out and len(out) > 1 else None,
        vocab_size_key=value(f"{arch}.vocab_size"),
        special_ids=specials,
        add_bos=value("tokenizer.ggml.add_bos_token"),
        chat_template=value("tokenizer.chat_template"),
        placeholder_scores=_placeholder_scores(reader, value("tokenizer.ggml.model")),
        context_length=value(f"{arch}.context_length") if arch else None,
        license=value("general.license"),
        bos_token=text("bos"),
        eos_token=text("eos"),
        eot_token=text("eot"),
        special_tokens=_special_tokens(reader),
        tensor_types=dict(Counter(t.tensor_type.name for t in reader.tensors)),
        n_params=sum(int(t.n_elements) for t in reader.tensors),
        tensor_bytes=sum(int(t.n_bytes) for t in reader.tensors),
        metadata=metadata,
    )


def _field_reader(reader: Any) -> Any:
    def value(key: str) -> Any:
        found = reader.fields.get(key)
        if found is None:
            return None
        try:
            return found.contents()
        except (ValueError, IndexError):
            return None

    return value


def _special_tokens(reader: Any) -> frozenset[str]:
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    types = reader.fields.get("tokenizer.ggml.token_type")
    if tokens is None or types is None:
        return frozenset()
    kinds = types.contents()
    count = min(len(kinds), len(tokens.data))
    return frozenset(tokens.contents(i) for i in range(count) if kinds[i] in _SPECIAL_TYPES)


def _placeholder_scores(reader: Any, tokenizer_model: str | None) -> bool:
    """A SentencePiece-style vocabulary whose merge scores are all the same placeholder."""
    field = reader.fields.get("tokenizer.ggml.scores")
    if tokenizer_model != "llama" or field is None or len(field.data) < 2:
        return False
    scores = {float(field.parts[i][0]) for i in field.data}
    return len(scores) == 1
