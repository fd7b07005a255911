"""What serving needs from a GGUF's metadata: the chat template and the end tokens.

Read with the PyPI ``gguf`` reader (memory-mapped: only the header is touched).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneship.common.errors import InvalidInput

# llama.cpp token types (gguf.TokenType): 3 = control, 4 = user defined.
_SPECIAL_TYPES = (3, 4)


@dataclass(frozen=True)
class GgufInfo:
    """The serving-relevant metadata of one GGUF file."""

    path: Path
    architecture: str
    name: str
    chat_template: str | None
    context_length: int
    license: str | None
    bos_token: str
    eos_token: str
    eot_token: str | None
    special_tokens: frozenset[str] = field(default_factory=frozenset)

    def end_tokens(self) -> list[str]:
        """EOS and end-of-turn token texts, without duplicates, in that order."""
        found = [t for t in (self.eos_token, self.eot_token) if t]
        return list(dict.fromkeys(found))


def _value(reader: Any, key: str) -> Any:
    field_ = reader.fields.get(key)
    return None if field_ is None else field_.contents()


def read_gguf_info(path: Path) -> GgufInfo:
    """Read ``path``'s metadata; ``InvalidInput`` if it is not a readable GGUF."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise InvalidInput(
            f"not a readable GGUF file: {exc}",
            where=str(path),
            hint="pass a .gguf written by the export stage (`tuneship export`)",
        ) from exc
    arch = str(_value(reader, "general.architecture") or "llama")
    tokens: list[str] = list(_value(reader, "tokenizer.ggml.tokens") or [])
    types: list[int] = list(_value(reader, "tokenizer.ggml.token_type") or [])

    def token(key: str) -> str | None:
        index = _value(reader, key)
        return tokens[int(index)] if index is not None and int(index) < len(tokens) else None

    eos = token("tokenizer.ggml.eos_token_id")
    if eos is None:
        raise InvalidInput(
            "the GGUF has no eos token (tokenizer.ggml.eos_token_id)",
            where=str(path),
            hint="re-export the model; without an end token the server cannot stop",
        )
    special = frozenset(t for t, kind in zip(tokens, types, strict=False) if kind in _SPECIAL_TYPES)
    return GgufInfo(
        path=path,
        architecture=arch,
        name=str(_value(reader, "general.name") or path.stem),
        chat_template=_value(reader, "tokenizer.chat_template"),
        context_length=int(_value(reader, f"{arch}.context_length") or 2048),
        license=_value(reader, "general.license"),
        bos_token=token("tokenizer.ggml.bos_token_id") or "",
        eos_token=eos,
        eot_token=token("tokenizer.ggml.eot_token_id"),
        special_tokens=special,
    )
