"""Spec section for the training stage (names follow TRL / PEFT)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from tuneship.common.spec.data import Section


class LoraSpec(Section):
    """LoRA hyperparameters (PEFT names)."""

    r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Module names (PEFT's rule: a name matches a module whose dotted name "
        "is it or ends in .name; a single string other than all-linear is a regular "
        "expression over the whole dotted name); each must match a module of the model.",
    )
    use_dora: bool = Field(
        False,
        description="Weight-decomposed LoRA (DoRA): a learned magnitude per output row "
        "besides the low-rank update; often closer to full fine-tuning, somewhat slower.",
    )

    @field_validator("target_modules")
    @classmethod
    def _not_the_head(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if any(name == "lm_head" or name.endswith(".lm_head") for name in names):
            raise ValueError(
                "LoRA on lm_head is never trained: TRL computes the log-probabilities from "
                "lm_head.weight directly and refuses such an adapter. Remove lm_head (all-linear "
                "already leaves it out); to change the output layer use method: full"
            )
        return value


class PreferenceSpec(Section):
    """Preference tuning (``objective: dpo`` or ``orpo``; TRL's names)."""

    beta: float = Field(
        0.1, gt=0, le=100,
        description="dpo: how far the model may move from the reference (lower: further); "
        "orpo: the weight of the odds-ratio term beside the chosen replies' loss.",
    )  # fmt: skip
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid", description="dpo only: sigmoid (DPO), ipo, hinge or robust."
    )


_METHODS = ("lora", "qlora", "full")
_OBJECTIVES = ("sft", "dpo", "orpo")


class TrainSpec(Section):
    """How to fine-tune (TRL SFTConfig names where TRL has one)."""

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: object) -> object:
        if value in _OBJECTIVES:
            raise ValueError(
                f"method names how the weights are trained ({', '.join(_METHODS)}); "
                f"{value} is a training objective: write objective: {value} beside "
                "method: lora (or qlora)"
            )
        return value

    @field_validator("objective")
    @classmethod
    def _objective(cls, value: str, info: ValidationInfo) -> str:
        method = info.data.get("method")
        if value != "sft" and method == "full":
            raise ValueError(
                f"{value} trains adapters here (method: lora or qlora): the reference model "
                "is the base with the adapter switched off, so no second copy of the "
                "model is held; a full fine-tune would need one"
            )
        return value

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("max_steps 0 would train nothing: use -1 (train the epochs) or >= 1")
        return value

    method: Literal["lora", "qlora", "full"] = "lora"
    objective: Literal["sft", "dpo", "orpo"] = Field(
        "sft",
        description="sft: learn the assistant replies of conversations; dpo or orpo: "
        "learn to prefer the chosen reply over the rejected one of preference pairs "
        "(records with prompt, chosen and rejected).",
    )
    preference: PreferenceSpec = PreferenceSpec()
    train_on: Literal["assistant", "last_assistant", "all"] = "assistant"
    lora: LoraSpec = LoraSpec()
    # Upper bounds are far past any real run: they catch typos (10**12 steps, a batch
    # of 10**8) before a GPU is reserved, not ambitious jobs.
    num_train_epochs: float = Field(1.0, gt=0, le=10_000)
    max_steps: int = Field(
        -1, ge=-1, le=100_000_000,
        description="Overrides epochs when at least 1; -1: train num_train_epochs.",
    )  # fmt: skip
    per_device_train_batch_size: int = Field(4, gt=0, le=65_536)
    gradient_accumulation_steps: int = Field(1, gt=0, le=65_536)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    packing: bool = Field(
        True,
        description="Padding-free batches with flash-attention kernels (checked to keep "
        "examples apart); padded length-grouped batches otherwise or when false.",
    )
    pad_to_multiple_of: int = Field(64, gt=0, description="Embedding rows when <pad> is added.")
    save_steps: int = Field(50, gt=0, description="Checkpoint every N optimizer steps.")
    eval_steps: int | None = Field(
        None, ge=1, le=100_000_000,
        description="Eval loss on the eval split every N optimizer steps (and at the last "
        "step); null: once, after training.",
    )  # fmt: skip
    early_stopping_patience: int | None = Field(
        None, ge=1, le=1_000_000,
        description="Stop after this many evaluations in a row without a lower eval loss "
        "than the best so far (needs eval_steps); null: train all the steps.",
    )  # fmt: skip
    export: Literal["best", "last"] = Field(
        "last",
        description="The weights in the output: last (the final step) or best (the "
        "evaluation with the lowest eval loss; needs eval_steps, a checkpoint is saved at "
        "each new best).",
    )
    logging_steps: int = Field(1, gt=0)
    seed: int = 42
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, slower."
    )
    devices: Literal["auto"] | int = Field(
        "auto",
        description="Training processes on each node: auto = every CUDA device the worker "
        "sees (1 without CUDA); N > 1 runs torchrun with N processes (on CPU: gloo, for "
        "testing). The global batch is per_device_train_batch_size x devices x nodes x "
        "gradient_accumulation_steps.",
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="How several processes share the work: ddp (a full copy of the model "
        "on each device) or fsdp (weights, gradients and optimizer state sharded; for "
        "method: full when the model does not fit one device).",
    )
    nodes: int = Field(
        1, ge=1, le=256,
        description="Machines in one training (k8s-job provider: a JobSet or TrainJob).",
    )  # fmt: skip
    report_to: list[Literal["mlflow", "wandb"]] = Field(
        default_factory=list,
        description="Trackers to log to besides the TensorBoard files every training "
        "writes (out/tensorboard/); the package must be installed on the trainer and set "
        "up by its own environment variables. The run name is the pipeline's id.",
    )
    ddp_timeout: int = Field(
        600, ge=10, le=86_400,
        description="Seconds a collective waits for the other ranks before the run fails "
        "(a dead or hung rank ends the attempt instead of hanging it).",
    )  # fmt: skip

    @field_validator("early_stopping_patience")
    @classmethod
    def _patience(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and "eval_steps" in info.data and info.data["eval_steps"] is None:
            raise ValueError(
                "early stopping compares evaluations made during training: set "
                "train.eval_steps too (e.g. eval_steps: 50), or remove early_stopping_patience"
            )
        return value

    @field_validator("export")
    @classmethod
    def _export(cls, value: str, info: ValidationInfo) -> str:
        if value == "best" and "eval_steps" in info.data and info.data["eval_steps"] is None:
            raise ValueError(
                "export: best picks the evaluation with the lowest eval loss, and without "
                "train.eval_steps there is only one (after the last step): set eval_steps "
                "(e.g. eval_steps: 50), or use export: last"
            )
        return value

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: str | int) -> str | int:
        if isinstance(value, int) and not 1 <= value <= 64:
            raise ValueError("devices must be auto or a number from 1 to 64")
        return value

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: str, info: ValidationInfo) -> str:
        method = info.data.get("method")
        if value == "fsdp" and method not in (None, "full"):
            raise ValueError(
                f"fsdp shards a full fine-tune; with method: {method} the adapters are "
                "small and every device holds the frozen model anyway: use strategy: ddp"
            )
        return value
