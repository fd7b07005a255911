"""``train.lora.target_modules`` checked against the loaded model before training starts.

PEFT refuses an adapter only when no name matches anything; a list with one typo among
good names trains silently without the layer the user asked for. Here every name must
match a module, by PEFT's own rule (``peft.tuners.tuners_utils.check_target_module_exists``:
a list entry matches a module whose dotted name is the entry or ends in ``.entry``; a
single string is a regular expression that must match the whole dotted name), so the
check and the adapter can never disagree.
"""

from __future__ import annotations

import difflib
from typing import Any

from tuneship.common.errors import InvalidInput
from tuneship.common.spec.train import LoraSpec

ALL_LINEAR = "all-linear"
"""PEFT's shorthand (compared case-insensitively, as PEFT does)."""
_WHERE = "train.lora.target_modules"


def check_target_modules(model: Any, lora: LoraSpec) -> None:
    """Raise ``InvalidInput`` naming each target that matches no module of ``model``.

    The message lists the closest module names (difflib) and the model's linear-layer
    names, the ones LoRA is usually put on.
    """
    targets = lora.target_modules
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        return
    keys = [name for name, _ in model.named_modules() if name]
    entries = [targets] if isinstance(targets, str) else list(targets)
    missing = [entry for entry in entries if not _matches_any(entry, targets, keys)]
    if not missing:
        return
    linear = linear_layer_names(model)
    # Close matches among the short names (q_proj) and the dotted ones (self_attn.q_proj).
    candidates = sorted({part for key in keys for part in _suffixes(key)})
    lines = []
    for entry in missing:
        close = difflib.get_close_matches(entry, candidates, n=3, cutoff=0.6)
        lines.append(f"{entry!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    kind = "regular expression matches" if isinstance(targets, str) else "names match"
    raise InvalidInput(
        f"{'; '.join(lines)}: no module of the model has that name "
        f"(PEFT's rule: {kind} the module's dotted name"
        + ("" if isinstance(targets, str) else " or its end after a dot")
        + f"). The model's linear layers: {', '.join(linear)}",
        where=_WHERE,
        hint=f"use names from that list, or {ALL_LINEAR} for every linear layer but the head",
    )


def linear_layer_names(model: Any) -> list[str]:
    """The distinct last names of the model's linear layers, without the output head."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
        }
    )


def _matches_any(entry: str, targets: str | list[str], keys: list[str]) -> bool:
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(target_modules=targets if isinstance(targets, str) else [entry])
    return any(check_target_module_exists(config, key) for key in keys)


def _suffixes(key: str) -> list[str]:
    """``model.layers.0.self_attn.q_proj`` → ``self_attn.q_proj``, ``q_proj``: the names
    a user writes, without the layer index and what comes before it."""
    parts = key.split(".")
    start = max((i + 1 for i, part in enumerate(parts) if part.isdigit()), default=0)
    return [".".join(parts[i:]) for i in range(start, len(parts))]
