"""The training stage: multi-turn chat SFT that trains the replies and learns to stop.

``train(spec, base, out, events)`` writes ``out/adapter`` (or ``out/model``),
``out/tokenizer``, ``out/training-manifest.json``, ``out/metrics.jsonl``,
``out/loss.png`` and ``out/tensorboard/``; ``inspect_data(spec, base, n)`` shows what
would be trained.
"""

from __future__ import annotations

from tuneship.trainer.prepare import inspect_data
from tuneship.trainer.run import MANIFEST, TrainResult, train

__all__ = ["MANIFEST", "TrainResult", "inspect_data", "train"]
