"""``doctor --fix``: repairs of an HF model directory that cannot change what it computes.

- more tokens than embedding rows (a tokenizer of 32001 tokens on 32000 rows): the embedding and
  lm_head grow to the tokenizer size; the new rows are the mean of the existing ones,
  so the new tokens start out as an average token instead of noise;
- more rows than tokens on the tokenizer.json-only path: unused placeholder tokens are
  added to the tokenizer until it matches (weights untouched);
- ``config.vocab_size`` different from the rows: set to the rows;
- training-only template tags: removed, rendering checked unchanged.

Each rewritten file is written beside the original and renamed over it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneship.common.atomic import atomic_write_text, staged_file
from tuneship.common.chat import read_chat_template, strip_training_tags
from tuneship.converter.doctor import (
    EMBEDDING_NAMES,
    DoctorReport,
    check_hf,
)
from tuneship.converter.template import check_same_rendering, parity_conversations

PLACEHOLDER = "<unused_{}>"


def fix_hf(model: Path) -> tuple[list[str], DoctorReport]:
    """Apply every safe repair to ``model``; return what was done and the new report."""
    done: list[str] = []
    report = check_hf(model)
    if not any(f.fixable for f in report.findings):
        return done, report
    size, rows = report.facts["tokenizer_size"], report.facts["embedding_rows"]
    if rows is not None and size > rows:
        _resize_rows(model, size)
        done.append(f"resized embedding and lm_head from {rows} to {size} rows (mean init)")
        rows = size
    elif rows is not None and size < rows and not report.facts["sentencepiece"]:
        _add_placeholders(model, rows - size)
        done.append(f"added {rows - size} unused placeholder tokens ({size} → {rows})")
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    if rows is not None and config.get("vocab_size") != rows:
        before = config.get("vocab_size")
        config["vocab_size"] = rows
        atomic_write_text(model / "config.json", json.dumps(config, indent=2) + "\n")
        done.append(f"set config.vocab_size {before} → {rows}")
    if any(f.check == "chat_template" and f.fixable for f in report.findings):
        _strip_template(model)
        done.append("removed {% generation %} tags from the chat template")
    return done, check_hf(model)


def _resize_rows(model: Path, size: int) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    for shard in sorted(model.glob("*.safetensors")):
        names = safetensors_shapes_of(shard)
        targets = [n for n in names if n.endswith((*EMBEDDING_NAMES, "lm_head.weight"))]
        if not targets:
            continue
        tensors = load_file(shard)
        for name in targets:
            weight = tensors[name]
            extra = size - weight.shape[0]
            mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
            tensors[name] = torch.cat([weight, mean.expand(extra, -1)]).contiguous()
        with staged_file(shard) as tmp:
            save_file(tensors, tmp, metadata={"format": "pt"})
    _refresh_index(model)


def safetensors_shapes_of(shard: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(shard, framework="pt") as handle:
        return list(handle.keys())


def _refresh_index(model: Path) -> None:
    index = model / "model.safetensors.index.json"
    if not index.is_file():
        return
    payload = json.loads(index.read_text(encoding="utf-8"))
    payload.setdefault("metadata", {})["total_size"] = sum(
        p.stat().st_size for p in model.glob("*.safetensors")
    )
    atomic_write_text(index, json.dumps(payload, indent=2) + "\n")


def _add_placeholders(model: Path, count: int) -> None:
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    start = len(tokenizer)
    tokens = [AddedToken(PLACEHOLDER.format(start + i), special=True) for i in range(count)]
    tokenizer.add_tokens(tokens, special_tokens=True)
    tokenizer.save_pretrained(model)


def _strip_template(model: Path) -> None:
    from transformers import AutoTokenizer

    original = read_chat_template(model)
    if original is None:
        return
    stripped = strip_training_tags(original)
    tokenizer = AutoTokenizer.from_pretrained(model)
    samples = parity_conversations(tokenizer, original, [])
    check_same_rendering(tokenizer, original, stripped, samples)
    if (model / "chat_template.jinja").is_file():
        atomic_write_text(model / "chat_template.jinja", stripped)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(config.get("chat_template"), str):
        config["chat_template"] = stripped
        atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")
