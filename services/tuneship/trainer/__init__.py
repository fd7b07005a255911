"""The training stage: multi-turn chat SFT that trains the replies and learns to stop.

``train(spec, base, out, events)`` writes ``out/adapter`` (or ``out/model``),
``out/tokenizer``, ``out/training-manifest.json``, ``out/metrics.jsonl``,
``out/loss.png`` and ``out/tensorboard/``; ``inspect_data(spec, base, n)`` shows what
would be trained.

The names are imported when first used: ``inspect_data`` needs the tokenizer only, and
``train`` pulls in the Trainer, PEFT and TRL (seconds of imports that ``tuneship
inspect-data`` has no use for).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuneship.trainer.prepare import inspect_data
    from tuneship.trainer.run import MANIFEST, TrainResult, train

__all__ = ["MANIFEST", "TrainResult", "inspect_data", "train"]
_HOMES = {"inspect_data": "prepare", "MANIFEST": "run", "TrainResult": "run", "train": "run"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tuneship.trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tuneship.trainer.{home}"), name)
