"""Training progress: stage events, ``metrics.jsonl`` and the loss curve.

One ``metrics.jsonl`` line per logged optimizer step. After a resume, lines beyond the
checkpoint's step are dropped first: those steps are trained again. With
``train.eval_steps`` the row of each evaluated step also has ``eval_loss`` (every row
keeps its training ``loss``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tuneship.common.events import Eta, EventSink, Log, Metrics, Progress
from tuneship.trainer import distributed
from tuneship.trainer.batching import TokenCount

STAGE = "train"
_TAIL_BYTES = 8192
"""Enough of the end of ``metrics.jsonl`` to hold its last row (a row is ~150 bytes)."""


class EventBridge(TrainerCallback):
    """Turns Trainer logs into stage events and ``metrics.jsonl`` lines.

    With several ranks every rank runs it (the Trainer calls back on all of them) and
    takes part in its collectives; only global rank 0 writes the metrics file, and only
    its sink relays events (the others get a ``NullSink``)."""

    def __init__(
        self,
        events: EventSink,
        metrics_path: Path,
        count: TokenCount,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.events = events
        self.stop = stop
        self.stopped_at: int | None = None
        """The step where training stopped early on request (a checkpoint is there)."""
        self.metrics_path = metrics_path
        self.count = count
        self.eta: Eta | None = None
        self.last_time = time.monotonic()
        self.last_tokens = 0
        self.first_step = 0
        self.training = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = True
        self.first_step = state.global_step
        self.eta = Eta(max(state.max_steps - state.global_step, 0))
        self.last_time = time.monotonic()
        self.last_tokens = distributed.total_over_ranks(self.count.real)
        if distributed.is_main_rank():
            truncate_metrics(self.metrics_path, state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs and "eval_loss" in logs and self.training and distributed.is_main_rank():
            evaluated = {"eval_loss": logs["eval_loss"], **preference_values(logs, "eval_")}
            add_to_row(self.metrics_path, int(state.global_step), evaluated)
        if not logs or "loss" not in logs:
            return
        tokens = distributed.total_over_ranks(self.count.real)  # every rank's, not one's
        now = time.monotonic()
        elapsed = max(now - self.last_time, 1e-9)
        tokens_per_s = (tokens - self.last_tokens) / elapsed
        self.last_time, self.last_tokens = now, tokens
        if not distributed.is_main_rank():
            return
        step = int(state.global_step)
        values = {
            "loss": float(logs["loss"]),
            "learning_rate": float(logs.get("learning_rate", 0.0)),
            "tokens_per_s": tokens_per_s,
            **preference_values(logs),
        }
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        self.events.emit(Metrics(STAGE, values, step))
        eta = self.eta.seconds_left(step - self.first_step) if self.eta else None
        self.events.emit(Progress(STAGE, step, int(state.max_steps), "steps", eta))

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The next step's tokens/s starts after the evaluation, not before it.
        self.last_time = time.monotonic()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = False  # an evaluation after training is not a row of the curve

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stop is None:
            return
        # Ranks see the request at different moments: they agree before acting on it,
        # or one would stop while the others wait for it in the next step's all-reduce.
        if distributed.agree(self.stop()) and state.global_step < state.max_steps:
            # Save here and end: the worker is going away (SIGTERM) and a retry resumes.
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = int(state.global_step)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Every rank writes its RNG state into the checkpoint: it is complete (and may be
        # copied to the store) once all of them are here.
        distributed.barrier()
        self.events.emit(Log(STAGE, f"checkpoint saved at step {state.global_step}"))


PREFERENCE_METRICS = {"rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy"}
"""TRL's dpo/orpo log names and the names of the same values in ``metrics.jsonl``: the
margin of the chosen reply's reward over the rejected one's, and how often it wins."""


def preference_values(logs: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The preference metrics of a TRL log (``prefix`` ``eval_`` for an evaluation's)."""
    return {
        prefix + ours: float(logs[prefix + theirs])
        for theirs, ours in PREFERENCE_METRICS.items()
        if prefix + theirs in logs
    }


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the lines up to ``step`` (the checkpoint a run resumes from)."""
    if not path.exists():
        return
    kept = [row for row in read_metrics(path) if row["step"] <= step]
    path.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")


def add_to_row(path: Path, step: int, values: dict[str, float]) -> None:
    """Add ``values`` to the last row when it is ``step``'s (an evaluation follows the
    training loss of its step), else append a row of their own. Only the last line is
    read and rewritten: a long run's file is not copied at each evaluation."""
    added = {name: float(value) for name, value in values.items()}
    with path.open("a+b") as handle:  # writes go to the end, after any truncation
        end = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, end - _TAIL_BYTES))
        tail = handle.read()
        body = tail.removesuffix(b"\n")
        cut = body.rfind(b"\n") + 1  # where the last line starts in ``tail``
        try:
            row = json.loads(body[cut:]) if (cut or end <= _TAIL_BYTES) and body else None
        except ValueError:
            row = None
        if isinstance(row, dict) and row.get("step") == step:
            handle.truncate(end - len(tail) + cut)
            added = {**row, **added}
        else:
            added = {"step": step, **added}
        handle.write((json.dumps(added) + "\n").encode("utf-8"))


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.jsonl`` (a torn last line from a kill is ignored)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_loss(rows: list[dict[str, float]], out: Path, title: str) -> None:
    """Write the loss curve as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    trained = [r for r in rows if "loss" in r]
    evaluated = [r for r in rows if "eval_loss" in r]
    axes.plot([r["step"] for r in trained], [r["loss"] for r in trained], linewidth=1.2,
              label="training loss")  # fmt: skip
    if evaluated:
        axes.plot([r["step"] for r in evaluated], [r["eval_loss"] for r in evaluated],
                  marker="o", markersize=3, linewidth=1.2, label="eval loss")  # fmt: skip
        axes.legend()
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (assistant tokens)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
