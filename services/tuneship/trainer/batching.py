"""Batching: padding-free where attention works per example; length-grouped otherwise.

Padding-free: the examples of a batch are concatenated into one row and
``position_ids`` restart at 0 for each. With no attention mask, transformers builds a
block-diagonal causal mask from those positions for every attention implementation, so
no token attends across examples (a probe checks it: packed logits must equal
per-example logits). The mask is only derived when no KV cache is in play, so these
batches turn the cache off.

Keeping examples apart is not the same as saving work: eager and sdpa attention
compute the whole packed row (its length squared) and mask most of it away, which costs
more than the padding it saves. Only the flash-attention kernels attend per example
(variable-length), so padding-free is used with those; everything else (sdpa on CPU
in particular) gets padded batches of similar lengths, which leave little padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneship.trainer.masking import IGNORE


@dataclass
class TokenCount:
    """Real (non-pad) and padded token totals, counted as batches are built."""

    real: int = 0
    padded: int = 0
    trained: int = 0

    @property
    def padding_fraction(self) -> float:
        total = self.real + self.padded
        return self.padded / total if total else 0.0


@dataclass
class PaddingFreeCollator:
    """One row per batch: examples back to back, positions restarting per example."""

    count: TokenCount = field(default_factory=TokenCount)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for feature in features:
            ids.extend(feature["input_ids"])
            # the first token of an example has no context inside its example
            labels.extend([IGNORE, *feature["labels"][1:]])
            positions.extend(range(len(feature["input_ids"])))
        self.count.real += len(ids)
        self.count.trained += sum(1 for label in labels if label != IGNORE)
        return {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]),
            # with a KV cache transformers skips the block-diagonal mask: never build one
            "use_cache": False,
        }


@dataclass
class PaddedCollator:
    """Right-padded to the longest example of the batch, with an attention mask."""

    pad_token_id: int
    count: TokenCount = field(default_factory=TokenCount)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for feature in features:
            gap = longest - len(feature["input_ids"])
            ids.append([*feature["input_ids"], *[self.pad_token_id] * gap])
            labels.append([*feature["labels"], *[IGNORE] * gap])
            mask.append([1] * len(feature["input_ids"]) + [0] * gap)
            self.count.real += len(feature["input_ids"])
            self.count.padded += gap
            self.count.trained += sum(1 for label in feature["labels"] if label != IGNORE)
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }


def keeps_examples_apart(model: Any, vocab_rows: int) -> bool:
    """True when a packed row gives each example the logits it gets on its own."""
    import torch

    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, vocab_rows, (1, 7), generator=generator)
    second = torch.randint(0, vocab_rows, (1, 5), generator=generator)
    packed = torch.cat([first, second], dim=1)
    positions = torch.tensor([[*range(7), *range(5)]])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = model(input_ids=second.to(device), use_cache=False).logits
            together = model(
                input_ids=packed.to(device), position_ids=positions.to(device), use_cache=False
            ).logits[:, 7:]
    finally:
        model.train(was_training)
    scale = alone.abs().max().clamp(min=1.0)
    return bool(((alone - together).abs().max() / scale) < 1e-2)


def choose_batching(model: Any, packing: bool, vocab_rows: int) -> str:
    """``padding-free`` or ``padded-length-grouped`` for this model (see module doc)."""
    implementation = str(getattr(model.config, "_attn_implementation", "") or "")
    if packing and "flash" in implementation and keeps_examples_apart(model, vocab_rows):
        return "padding-free"
    return "padded-length-grouped"


class EpochLengthGroupedSampler:
    """Length-grouped order that is a function of (seed, epoch) alone.

    transformers' own length-grouped sampler draws its permutation from the global
    torch generator when an epoch starts. That state depends on everything drawn
    before (dropout in the epochs already trained), so a run resumed in its second
    epoch or later shuffled differently from an uninterrupted one. The Trainer calls
    ``set_epoch`` before every epoch, on a resumed run too, so this order repeats."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))
