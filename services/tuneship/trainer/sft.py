"""The SFT loop: TRL's ``SFTTrainer`` fed with tuneship's finished examples.

tuneship hands TRL what it has already decided: token ids from its own rendering, labels
masked by its own mask, its collator (pad policy, padding-free rows) and its
length-grouped sampler (resumable order). TRL is told to prepare nothing
(``skip_prepare_dataset``: no templating, tokenization, truncation or packing) and to
add no masking of its own (no ``completion_only_loss``/``assistant_only_loss``).

What is switched off, and why:

- TRL's loss: ``SFTTrainer.compute_loss`` runs its fused LM head and, on every
  micro-batch, also computes the entropy and top-1 accuracy of every token and gathers
  three metrics to the host (``trl/trainer/sft_trainer.py``, ``compute_loss``). No
  ``SFTConfig`` field turns those off, so the loss is transformers' own: the model's
  cross-entropy over tuneship's labels, as before the move onto TRL.
- TRL's cast of QLoRA adapters to bf16 (``SFTTrainer.__init__``, "the PEFT adapter
  weights are converted to bf16"): the adapters keep PEFT's dtype, which fp16 GPUs
  need and which the rest of tuneship was tested with.
- The model card TRL writes beside the checkpoints: the manifest is the run's record.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

from tuneship.common.spec import TrainSpec
from tuneship.trainer import distributed, model_io, tracking
from tuneship.trainer.batching import EpochLengthGroupedSampler, TokenCount
from tuneship.trainer.masking import Example
from tuneship.trainer.prepare import PreparedData
from tuneship.trainer.progress import EventBridge

TRL_IMPORT = threading.Lock()
"""Held while importing from ``trl``: a trainer runs several trainings at once in
threads, and TRL's lazy module, first touched by two of them together, gave one
"cannot import name 'SFTConfig' from 'trl'"."""


def sft_config(train: TrainSpec, partial: Path, packed: bool, run_name: str | None = None) -> Any:
    """``SFTConfig`` from the spec's ``train`` section (same names where TRL has them);
    ``run_name`` names the run in the trackers of ``train.report_to``."""
    with TRL_IMPORT:
        from trl import SFTConfig

    return one_device(
        SFTConfig(
            **training_args(train, partial, run_name),
            train_sampling_strategy="random" if packed else "group_by_length",
            # The examples are final: TRL prepares nothing and masks nothing.
            dataset_kwargs={"skip_prepare_dataset": True},
            max_length=None,  # dataset.max_length was enforced (with an error) when encoding
            packing=False,
            padding_free=False,  # tuneship's collator builds padding-free rows itself
            completion_only_loss=False,
            assistant_only_loss=False,
            prediction_loss_only=True,  # evaluations keep no logits of the eval split
        )
    )


def training_args(train: TrainSpec, partial: Path, run_name: str | None) -> dict[str, Any]:
    """The ``TrainingArguments`` every objective shares, from the spec's ``train`` section."""
    import torch

    cuda = torch.cuda.is_available()
    dtype = model_io.training_dtype(train)
    return {
        "output_dir": str(partial / "checkpoints"),
        "per_device_train_batch_size": train.per_device_train_batch_size,
        "per_device_eval_batch_size": train.per_device_train_batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "learning_rate": train.learning_rate,
        "lr_scheduler_type": train.lr_scheduler_type,
        "warmup_steps": train.warmup_ratio,
        "weight_decay": train.weight_decay,
        "num_train_epochs": train.num_train_epochs,
        "max_steps": train.max_steps,
        "logging_steps": train.logging_steps,
        "save_strategy": "steps",
        "save_steps": train.save_steps,
        # Evaluation during training (evaluation.py decides saves and early stops).
        "eval_strategy": "steps" if train.eval_steps else "no",
        "eval_steps": train.eval_steps,
        "seed": train.seed,
        "data_seed": train.seed,
        "bf16": cuda and dtype == torch.bfloat16,
        "fp16": cuda and dtype == torch.float16,
        "use_cpu": not cuda,
        "activation_checkpointing": train.gradient_checkpointing,
        "report_to": tracking.report_to(train),
        "run_name": run_name,
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        # Several ranks (torchrun): a dead or hung rank ends the run after ddp_timeout;
        # every trainable weight (the adapters, or all for full) takes part in each
        # step, so DDP need not look for unused ones (a graph walk per step).
        "ddp_timeout": train.ddp_timeout,
        "ddp_find_unused_parameters": False,
        **_fsdp(train),
    }


def one_device(config: Any) -> Any:
    """``devices: 1`` on a machine with several GPUs: one GPU, not nn.DataParallel over
    all of them (TRL refuses that). transformers sets the same private field when a model
    is split across devices."""
    import torch

    if (
        torch.cuda.is_available()
        and distributed.world_size() == 1
        and torch.cuda.device_count() > 1
    ):
        _ = config.device
        config._n_gpu = 1
    return config


def _fsdp(train: TrainSpec) -> dict[str, Any]:
    """FSDP settings for ``strategy: fsdp`` with several ranks (transformers' names)."""
    if train.strategy != "fsdp" or distributed.world_size() == 1:
        return {}
    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "state_dict_type": "FULL_STATE_DICT",
            "cpu_ram_efficient_loading": False,
        },
    }


def build_trainer(
    model: Any, prepared: PreparedData, config: Any, collator: Any, bridge: EventBridge
) -> Any:
    """A ``SFTTrainer`` on the already wrapped ``model`` (TRL wraps nothing: no peft_config)."""
    from datasets import Dataset
    from transformers import PrinterCallback

    def rows(examples: list[Example]) -> Any:
        return Dataset.from_dict(
            {"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]}
        )

    trainable = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    trainer = _tuneship_sft_trainer()(
        model=model,
        args=config,
        train_dataset=rows(prepared.train),
        eval_dataset=rows(prepared.eval) if prepared.eval else None,
        processing_class=prepared.tokenizer,
        data_collator=collator,
        callbacks=[bridge],
        lengths=[len(e.input_ids) for e in prepared.train],
    )
    restore_dtypes(model, trainable)
    trainer.remove_callback(PrinterCallback)  # progress goes through the event sink only
    return trainer


def restore_dtypes(model: Any, dtypes: dict[str, Any]) -> None:
    """Give the trainable weights back the dtypes they had before TRL's trainer cast
    them (see the module doc)."""
    for name, parameter in model.named_parameters():
        if name in dtypes and parameter.dtype != dtypes[name]:
            parameter.data = parameter.data.to(dtypes[name])


def grouped_sampler(args: Any, lengths: list[int]) -> EpochLengthGroupedSampler:
    """Length-grouped order that repeats on resume (``EpochLengthGroupedSampler``), one
    group per global optimizer step: with N ranks each step takes N consecutive batches
    of this order, so the examples of a step are the ones a single process with an N
    times larger batch would take."""
    size = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
    return EpochLengthGroupedSampler(lengths, size, int(args.data_seed or 0))


def _tuneship_sft_trainer() -> Any:
    """``SFTTrainer`` with tuneship's sampler and transformers' loss (see module doc)."""
    from transformers import Trainer

    with TRL_IMPORT:
        from trl import SFTTrainer

    class TuneshipSFTTrainer(SFTTrainer):
        def __init__(self, *args: Any, lengths: list[int], **kwargs: Any) -> None:
            self.example_lengths = lengths
            super().__init__(*args, **kwargs)

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            # Length-grouped order that repeats on resume; random order (padding-free
            # batches) already does.
            if self.args.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(train_dataset)
            return grouped_sampler(self.args, self.example_lengths)

        def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
            # Evaluation batches are not training: their tokens go to a count of their
            # own, not into the tokens/s and padding of the training loop.
            collator: Any = self.data_collator
            self.data_collator = dataclasses.replace(collator, count=TokenCount())
            try:
                return super().get_eval_dataloader(eval_dataset)
            finally:
                self.data_collator = collator

        def compute_loss(
            self,
            model: Any,
            inputs: Any,
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

        def create_model_card(self, *args: Any, **kwargs: Any) -> None:
            return None

    return TuneshipSFTTrainer
