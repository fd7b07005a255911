"""Preference tuning on TRL's trainers: ``DPOTrainer`` (``objective: dpo``) and the
ORPO trainer (``objective: orpo``), fed with tuneship's finished pairs.

Each pair arrives tokenized by tuneship's own rendering (``AssistantMask.encode_pair``):
the prompt with the generation prompt, and each reply up to and including the control
token that ends it. TRL's own tokenization is switched off (it would train on template
text after that token, ChatML's newline for one), so the loss covers exactly the
chosen and rejected replies and their end-of-turn tokens, as SFT's masks do.

The reference model of DPO is the base itself: the model is a PEFT model and TRL
computes the reference log-probabilities through a frozen copy of the freshly
initialised adapter (a no-op), so no second model is held. ORPO needs no reference.
Only the trained adapter (``default``) is saved. As for SFT, the adapters keep PEFT's
dtype (TRL casts a QLoRA model's adapters to bf16, which fp16 GPUs cannot train).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneship.common.spec import TrainSpec
from tuneship.trainer.batching import TokenCount
from tuneship.trainer.masking import IGNORE, PairExample
from tuneship.trainer.prepare import PreparedData
from tuneship.trainer.progress import EventBridge
from tuneship.trainer.sft import (
    TRL_IMPORT,
    grouped_sampler,
    one_device,
    restore_dtypes,
    training_args,
)

REFERENCE_ADAPTER = "ref"
"""The adapter DPOTrainer adds as the frozen reference (a copy of the initial one)."""


def preference_config(train: TrainSpec, partial: Path, run_name: str | None = None) -> Any:
    """``DPOConfig`` or ``ORPOConfig`` from the spec's ``train`` section."""
    common = training_args(train, partial, run_name)
    if train.objective == "dpo":
        with TRL_IMPORT:
            from trl import DPOConfig

        return one_device(
            DPOConfig(
                **common,
                beta=train.preference.beta,
                loss_type=[train.preference.loss_type],
                max_length=None,  # dataset.max_length was enforced when encoding
                precompute_ref_log_probs=False,
                train_sampling_strategy="group_by_length",
            )
        )
    with TRL_IMPORT:
        from trl.experimental.orpo import ORPOConfig

    return one_device(
        ORPOConfig(
            **common,
            beta=train.preference.beta,
            max_length=None,
            train_sampling_strategy="group_by_length",
        )
    )


def build_preference_trainer(
    model: Any, prepared: PreparedData, config: Any, pad_token_id: int, bridge: EventBridge
) -> Any:
    """A DPO or ORPO trainer on the already wrapped ``model`` with tuneship's pairs."""
    from transformers import PrinterCallback

    orpo = type(config).__name__ == "ORPOConfig"
    rows = _orpo_rows if orpo else _dpo_rows
    cls = _orpo_trainer() if orpo else _dpo_trainer()
    kwargs: dict[str, Any] = {
        "model": model,
        "args": config,
        "train_dataset": rows(prepared.train_pairs),
        "eval_dataset": rows(prepared.eval_pairs) if prepared.eval_pairs else None,
        "processing_class": prepared.tokenizer,
        "data_collator": _collator(orpo, pad_token_id, bridge),
        "callbacks": [bridge],
        "lengths": [pair.length for pair in prepared.train_pairs],
    }
    trainable = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    trainer = cls(**kwargs)
    restore_dtypes(model, trainable)
    if orpo:
        # The collator is ORPO's own, wrapped to count tokens: evaluation may use it.
        trainer.use_dpo_data_collator = True
    trainer.remove_callback(PrinterCallback)  # progress goes through the event sink only
    return trainer


def drop_reference(model: Any) -> None:
    """Remove DPO's frozen reference adapter so only the trained one is saved."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)


def _dpo_rows(pairs: list[PairExample]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt_ids": [p.prompt_ids for p in pairs],
            "chosen_ids": [p.chosen_ids for p in pairs],
            "rejected_ids": [p.rejected_ids for p in pairs],
        }
    )


def _orpo_rows(pairs: list[PairExample]) -> Any:
    """The columns ORPO's trainer builds in its own ``tokenize_row``."""
    from datasets import Dataset

    columns: dict[str, list[list[int]]] = {}
    for pair in pairs:
        prompt = pair.prompt_ids
        row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
        for side, reply in (("chosen", pair.chosen_ids), ("rejected", pair.rejected_ids)):
            row[f"{side}_input_ids"] = prompt + reply
            row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(reply))
            row[f"{side}_labels"] = [IGNORE] * len(prompt) + reply
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
    return Dataset.from_dict(columns)


def _collator(orpo: bool, pad_token_id: int, bridge: EventBridge) -> Any:
    """TRL's preference collator for the objective, counting the real tokens it batches."""
    if orpo:
        with TRL_IMPORT:
            from trl.experimental.utils import DPODataCollatorWithPadding

        return CountingCollator(
            DPODataCollatorWithPadding(pad_token_id=pad_token_id), orpo, bridge.count
        )
    with TRL_IMPORT:
        from trl.trainer.dpo_trainer import DataCollatorForPreference

    return CountingCollator(
        DataCollatorForPreference(pad_token_id=pad_token_id), orpo, bridge.count
    )


@dataclass
class CountingCollator:
    """A preference collator whose batches' real and padded tokens go into ``count``."""

    inner: Any
    orpo: bool
    count: TokenCount

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.inner(features)
        if self.orpo:
            masks = [batch["chosen_attention_mask"], batch["rejected_attention_mask"]]
        else:
            masks = [batch["attention_mask"]]  # chosen and rejected rows, stacked
        real = sum(int(mask.sum()) for mask in masks)
        self.count.real += real
        self.count.padded += sum(mask.numel() for mask in masks) - real
        return batch


def _apart(trainer: Any, dataloader: Callable[[], Any]) -> Any:
    """The eval dataloader ``dataloader()`` builds, with a collator that counts apart:
    evaluation batches are not in the training loop's tokens/s and padding."""
    collator = trainer.data_collator
    trainer.data_collator = dataclasses.replace(collator, count=TokenCount())
    try:
        return dataloader()
    finally:
        trainer.data_collator = collator


def _in_order(dataset: Any) -> Any:
    """Held-out pairs in file order (transformers would group them by an ``input_ids``
    length the pairs do not have)."""
    from torch.utils.data import SequentialSampler

    return SequentialSampler(dataset)


class _PairTrainer:
    """What tuneship changes in both of TRL's preference trainers (mixed in before them):
    the length-grouped, resumable order; held-out pairs in file order, counted apart;
    no model card (the manifest is the run's record)."""

    args: Any
    example_lengths: list[int]

    def __init__(self, *args: Any, lengths: list[int], **kwargs: Any) -> None:
        self.example_lengths = lengths
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        return grouped_sampler(self.args, self.example_lengths)

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        return _in_order(eval_dataset)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        parent = super()
        return _apart(self, lambda: parent.get_eval_dataloader(eval_dataset))  # type: ignore[attr-defined]

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        return None


def _dpo_trainer() -> Any:
    with TRL_IMPORT:
        from trl import DPOTrainer

    class TuneshipDPOTrainer(_PairTrainer, DPOTrainer):
        def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
            return dataset  # tokenized and masked by tuneship (see module doc)

    return TuneshipDPOTrainer


def _orpo_trainer() -> Any:
    with TRL_IMPORT:
        from trl.experimental.orpo import ORPOTrainer

    class TuneshipORPOTrainer(_PairTrainer, ORPOTrainer):
        def tokenize_row(self, feature: Any, model: Any = None) -> dict:
            return {}  # the rows already hold every column (see _orpo_rows)

    return TuneshipORPOTrainer
