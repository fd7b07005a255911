"""Evaluation during training (``train.eval_steps``): the eval curve, early stopping on
it and the export of the best weights.

Every decision is taken from the Trainer's ``log_history``, which each checkpoint
carries in its ``trainer_state.json``: a run resumed from a checkpoint (here or on
another worker) knows every evaluation up to that step, so the best step and the
evaluations since it are the same as in a run that was never interrupted. Nothing is
kept in the callback between calls.

With ``export: best`` a checkpoint is saved at each evaluation that beats all earlier
ones; the best is therefore always a checkpoint, and the end of training loads its
weights back (transformers' own loading, the one resuming uses). The worker keeps that
checkpoint in the store beside the newest ones (``servicer.py``).

transformers' ``load_best_model_at_end`` and ``EarlyStoppingCallback`` are not used:
the first needs ``save_steps`` to be a multiple of ``eval_steps`` (spec fields that mean
something else here) and the second keeps its counter in the callback, restored from a
checkpoint only with ``restore_callback_states_from_checkpoint``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tuneship.common.errors import FailedPrecondition, InvalidInput
from tuneship.common.events import EventSink, Log, Metrics
from tuneship.common.spec import TrainSpec
from tuneship.trainer import distributed

STAGE = "train"
EVAL_LOSS = "eval_loss"
"""The Trainer's name for the eval loss, also the field of ``metrics.jsonl``."""


def evaluations(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(step, eval loss) of each evaluation in a Trainer's ``log_history``, in order."""
    return [(int(row["step"]), float(row[EVAL_LOSS])) for row in log_history if EVAL_LOSS in row]


def best_of(points: list[tuple[int, float]]) -> tuple[int, float]:
    """The evaluation with the lowest loss (the earliest of equal ones)."""
    return min(points, key=lambda point: point[1])


def best_step_of(checkpoint: Path) -> int | None:
    """The best evaluation's step as a checkpoint knows it (None: no evaluation yet)."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    points = evaluations(state.get("log_history", []))
    return best_of(points)[0] if points else None


class EvalWatch(TrainerCallback):
    """Reports each evaluation made during training, saves a checkpoint at each new best
    (``export: best``) and stops when ``early_stopping_patience`` evaluations in a row
    did not beat the best. Every rank runs it: the eval loss is gathered over the ranks,
    so they all take the same decisions."""

    def __init__(self, train: TrainSpec, events: EventSink) -> None:
        self.train = train
        self.events = events
        self.training = False
        self.stopped_early_at: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # A training loss row at every evaluated step, whatever logging_steps says, so
        # the eval loss joins a row of metrics.jsonl (all rows keep their "loss").
        if control.should_evaluate:
            control.should_log = True

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.training:  # an evaluation after training is not part of the curve
            return
        points = evaluations(state.log_history)  # this evaluation included
        if not points:
            return
        step, loss = points[-1]
        best_step, best_loss = best_of(points)
        since = len(points) - 1 - points.index((best_step, best_loss))
        if best_step == step:
            note = "new best"
            if self.train.export == "best":
                control.should_save = True
        else:
            note = f"best {best_loss:.4f} at step {best_step}"
        self.events.emit(Log(STAGE, f"eval loss {loss:.4f} at step {step} ({note})"))
        self.events.emit(Metrics(STAGE, {EVAL_LOSS: loss}, step))
        patience = self.train.early_stopping_patience
        if patience is not None and since >= patience and state.global_step < state.max_steps:
            control.should_training_stop = True
            self.stopped_early_at = step
            self.events.emit(
                Log(
                    STAGE,
                    f"early stopping at step {step} of {state.max_steps}: the eval loss has not "
                    f"improved for {since} evaluations (early_stopping_patience: {patience}); "
                    f"best {best_loss:.4f} at step {best_step}",
                )
            )


@dataclass(frozen=True)
class EvalSummary:
    """The eval curve in the manifest: its best point and which weights were exported."""

    eval_steps: int
    evaluations: int
    best_step: int
    best_eval_loss: float
    last_step: int
    last_eval_loss: float
    exported: str
    exported_step: int
    stopped_early_at: int | None
    held_out: dict[str, float] = field(default_factory=dict)
    """Everything the evaluation of the exported step logged (``eval_loss``, and TRL's
    reward metrics for dpo/orpo)."""

    @property
    def exported_eval_loss(self) -> float:
        return self.best_eval_loss if self.exported_step == self.best_step else self.last_eval_loss

    def as_dict(self) -> dict[str, Any]:
        """The manifest's ``metrics.evaluation``."""
        summary = asdict(self)
        del summary["held_out"]
        return summary


def export_weights(
    trainer: Any, train: TrainSpec, checkpoints: Path, watch: EvalWatch
) -> EvalSummary | None:
    """After training with ``eval_steps``: load the best checkpoint's weights into the
    model when ``export: best`` asks for them, and summarize the curve (None without
    ``eval_steps``). Raises ``FailedPrecondition`` when the best checkpoint is missing."""
    if train.eval_steps is None:
        return None
    points = evaluations(trainer.state.log_history)
    if not points:
        return None
    best_step, best_loss = best_of(points)
    last_step, last_loss = points[-1]
    exported_step = last_step
    if train.export == "best" and best_step != last_step:
        path = checkpoints / f"checkpoint-{best_step}"
        if not (path / "trainer_state.json").is_file():
            raise FailedPrecondition(
                f"the best evaluation was at step {best_step}, and its checkpoint {path} "
                "is missing",
                where="train.export",
                hint="retry the training from the start, or use export: last",
            )
        # FSDP loads in every rank (a collective); with DDP only rank 0's weights are
        # written, and other nodes may not hold the checkpoint.
        if trainer.is_fsdp_enabled or distributed.is_main_rank():
            trainer._load_from_checkpoint(str(path))
        exported_step = best_step
    return EvalSummary(
        eval_steps=train.eval_steps,
        evaluations=len(points),
        best_step=best_step,
        best_eval_loss=best_loss,
        last_step=last_step,
        last_eval_loss=last_loss,
        exported=train.export,
        exported_step=exported_step,
        stopped_early_at=watch.stopped_early_at,
        held_out=_logged_at(trainer.state.log_history, exported_step),
    )


def _logged_at(log_history: list[dict[str, Any]], step: int) -> dict[str, float]:
    """The metrics of the evaluation at ``step``."""
    entry = next(row for row in reversed(log_history) if EVAL_LOSS in row and row["step"] == step)
    return {
        name: float(value)
        for name, value in entry.items()
        if name.startswith("eval_") and isinstance(value, int | float)
    }


def check_eval_split(train: TrainSpec, eval_examples: int) -> None:
    """``InvalidInput`` when ``eval_steps`` is set and the eval split came out empty (a
    small dataset whose ``eval_fraction`` rounds to no conversation, or an eval file of
    skipped ones); the spec check refuses the obvious case before this."""
    if train.eval_steps is not None and eval_examples == 0:
        raise InvalidInput(
            "train.eval_steps evaluates on the eval split, and this dataset's eval split is empty",
            where="dataset.eval_fraction",
            hint="raise dataset.eval_fraction, give dataset.eval (a file of held-out "
            "conversations), or remove train.eval_steps",
        )
