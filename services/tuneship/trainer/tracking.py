"""Experiment tracking: TensorBoard event files in every output, MLflow / W&B on request.

The event file is written once, when the training finishes, from the rows of
``metrics.jsonl``: the same numbers at the same steps, each step once however many
times the run was interrupted and resumed (``metrics.jsonl`` drops the steps after the
checkpoint a run resumes from, and the worker copies it with the checkpoints when an
attempt moves to another worker). It costs nothing per step and only global rank 0,
which assembles the output, writes it.

``train.report_to`` hands MLflow and Weights & Biases to transformers' own callbacks,
which log live from global rank 0; they are configured by their usual environment
variables on the worker (``MLFLOW_TRACKING_URI``, ``WANDB_API_KEY``/``WANDB_MODE``...).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

from tuneship.common.errors import FailedPrecondition
from tuneship.common.spec import TrainSpec

TENSORBOARD_DIR = "tensorboard"
"""In the training output: ``tensorboard --logdir out/tensorboard``."""
_SCALARS = {"loss": "train/loss", "learning_rate": "train/learning_rate",
            "tokens_per_s": "train/tokens_per_s", "eval_loss": "eval/loss",
            "reward_margin": "train/reward_margin", "reward_accuracy": "train/reward_accuracy",
            "eval_reward_margin": "eval/reward_margin",
            "eval_reward_accuracy": "eval/reward_accuracy"}  # fmt: skip
"""metrics.jsonl field → TensorBoard tag (transformers' ``train/`` / ``eval/`` names)."""
_PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}


def check_report_to(train: TrainSpec) -> None:
    """``FailedPrecondition`` at ``train.report_to`` for a tracker that is not installed."""
    missing = [name for name in train.report_to if importlib.util.find_spec(name) is None]
    if missing:
        packages = " ".join(_PACKAGES[name] for name in missing)
        raise FailedPrecondition(
            f"report_to names {', '.join(missing)}, which is not installed on this trainer",
            where="train.report_to",
            hint=f"install it in the trainer's image (pip install {packages}) and set its "
            "environment (MLFLOW_TRACKING_URI; WANDB_API_KEY or WANDB_MODE=offline), or "
            "remove it from report_to: TensorBoard files are written in any case",
        )


def report_to(train: TrainSpec) -> list[str] | str:
    """transformers' ``report_to``: the spec's trackers, or ``"none"``."""
    return list(train.report_to) or "none"


def write_tensorboard(
    rows: list[dict[str, float]], eval_loss: float | None, out: Path, run_name: str
) -> Path:
    """One event file in ``out`` (emptied first: a retry leaves no second copy) with the
    rows' scalars: the eval curve of ``train.eval_steps`` or, without one, the eval
    loss after training at the last step."""
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    writer: Any = SummaryWriter(log_dir=str(out))
    try:
        writer.add_text("run_name", run_name)
        for row in rows:
            step = int(row["step"])
            for field, tag in _SCALARS.items():
                if field in row:
                    writer.add_scalar(tag, float(row[field]), step)
        if eval_loss is not None and not any("eval_loss" in row for row in rows):
            writer.add_scalar("eval/loss", float(eval_loss), int(rows[-1]["step"]) if rows else 0)
    finally:
        writer.close()
    return out
