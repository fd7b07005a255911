"""The training manifest, as the merge stage reads it (the trainer's contract).

Only the fields the merge needs are typed here; every other field is carried along
into the merge manifest untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.common.errors import InvalidInput, NotFound

MANIFEST = "training-manifest.json"
VOCAB_DECISIONS = ("existing", "reused", "added")


@dataclass(frozen=True)
class VocabDecision:
    """What the trainer did about the pad token and the embedding rows."""

    decision: str
    pad_token: str | None
    pad_token_id: int | None
    tokenizer_size_before: int
    tokenizer_size_after: int
    embedding_rows_before: int
    embedding_rows_after: int
    pad_to_multiple_of: int | None


@dataclass(frozen=True)
class TrainManifest:
    """``training-manifest.json`` of a training-stage output directory."""

    path: Path
    method: str
    vocab: VocabDecision
    raw: dict[str, Any]

    @property
    def weights_dir(self) -> Path:
        """``adapter/`` for LoRA and QLoRA, ``model/`` for a full fine-tune."""
        return self.path.parent / ("model" if self.method == "full" else "adapter")

    @property
    def tokenizer_dir(self) -> Path:
        return self.path.parent / "tokenizer"


def read_manifest(train_out: Path) -> TrainManifest:
    """Read and check ``train_out/training-manifest.json``.

    Raises ``NotFound`` when the file or the weights it points at are missing and
    ``InvalidInput`` naming the field when a field is missing or has the wrong type.
    """
    path = train_out / MANIFEST
    if not path.is_file():
        raise NotFound(
            f"no {MANIFEST} in {train_out}",
            where=str(train_out),
            hint="pass the training stage's output directory (adapter/, tokenizer/, manifest)",
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON: {exc.msg}", where=f"{path}:{exc.lineno}") from exc
    method = _field(raw, "method", str, path)
    if method not in ("lora", "qlora", "full"):
        raise InvalidInput(f"method {method!r} is not lora, qlora or full", where=f"{path}: method")
    vocab_raw = _field(raw, "vocab", dict, path)
    vocab = VocabDecision(
        decision=_field(vocab_raw, "decision", str, path, "vocab."),
        pad_token=vocab_raw.get("pad_token"),
        pad_token_id=vocab_raw.get("pad_token_id"),
        tokenizer_size_before=_field(vocab_raw, "tokenizer_size_before", int, path, "vocab."),
        tokenizer_size_after=_field(vocab_raw, "tokenizer_size_after", int, path, "vocab."),
        embedding_rows_before=_field(vocab_raw, "embedding_rows_before", int, path, "vocab."),
        embedding_rows_after=_field(vocab_raw, "embedding_rows_after", int, path, "vocab."),
        pad_to_multiple_of=vocab_raw.get("pad_to_multiple_of"),
    )
    if vocab.decision not in VOCAB_DECISIONS:
        raise InvalidInput(
            f"vocab.decision {vocab.decision!r} is not one of {', '.join(VOCAB_DECISIONS)}",
            where=f"{path}: vocab.decision",
        )
    manifest = TrainManifest(path, method, vocab, raw)
    for needed in (manifest.weights_dir, manifest.tokenizer_dir):
        if not needed.is_dir():
            raise NotFound(f"{needed.name}/ is missing beside {MANIFEST}", where=str(needed))
    return manifest


def _field(data: dict[str, Any], name: str, kind: type, path: Path, prefix: str = "") -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidInput(
            f"field {prefix}{name} must be a {kind.__name__}, got {value!r}",
            where=f"{path}: {prefix}{name}",
            hint="the training stage writes this field; re-run training or fix the manifest",
        )
    return value
