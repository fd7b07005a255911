"""``training-manifest.json``: what was trained, from what, how, and what came out.

The merge stage reads these fields; their names are a contract.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from tuneship.common.spec import PipelineSpec
from tuneship.trainer.model_io import hash_base
from tuneship.trainer.prepare import PreparedData
from tuneship.trainer.vocab import PadDecision

_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "tokenizers")


def build_manifest(
    spec: PipelineSpec,
    base: Path,
    prepared: PreparedData,
    pad: PadDecision,
    measured: dict[str, Any],
) -> dict[str, Any]:
    """The manifest as a JSON-ready dict."""
    conversations = prepared.conversations
    train, held_out = prepared.counts
    return {
        "method": spec.train.method,
        "objective": spec.train.objective,
        "base_model": {"path": str(base), "sha256": hash_base(base)},
        "dataset": {
            "train": spec.dataset.train,
            "eval": spec.dataset.eval,
            "sha256": conversations.sha256,
            "train_examples": train,
            "eval_examples": held_out,
            # What train and eval resolved to (a hub dataset: its commit, not a branch);
            # preference pairs (common.preferences) do not record it yet.
            "sources": conversations.sources,
            "revision": conversations.revision,
            "duplicates_removed": conversations.duplicates,
            "skipped": [item.as_dict() for item in conversations.skipped],
        },
        "template": {
            "source": prepared.template.source,
            "has_generation_tags": prepared.template.has_generation_tags,
        },
        "vocab": pad.as_dict(),
        "mask": prepared.mask_summary(),
        "hyperparameters": spec.train.model_dump(mode="json"),
        "metrics": measured,
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the result."""
    found = {}
    for name in _LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
