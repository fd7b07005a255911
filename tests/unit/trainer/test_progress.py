"""metrics.jsonl: an evaluation joins the row of its step without rewriting the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tuneship.trainer.progress import add_to_row, read_metrics

pytestmark = pytest.mark.unit


def write_rows(path: Path, steps: int) -> list[dict[str, float]]:
    rows = [{"step": s, "loss": 1.0 / s, "learning_rate": 1e-4, "tokens_per_s": 900.0}
            for s in range(1, steps + 1)]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


@pytest.mark.parametrize("steps", [1, 3, 500])  # 500 rows: far more than the tail read
def test_the_eval_loss_joins_the_last_row_of_its_step(tmp_path: Path, steps: int) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = write_rows(path, steps)
    add_to_row(path, steps, {"eval_loss": 2.5})
    assert read_metrics(path) == [*rows[:-1], {**rows[-1], "eval_loss": 2.5}]
    assert len(path.read_text().splitlines()) == steps


def test_an_eval_without_a_row_of_its_step_gets_its_own(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = write_rows(path, 4)
    add_to_row(path, 5, {"eval_loss": 2.5})
    assert read_metrics(path) == [*rows, {"step": 5, "eval_loss": 2.5}]
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    add_to_row(empty, 2, {"eval_loss": 1.0})
    assert read_metrics(empty) == [{"step": 2, "eval_loss": 1.0}]
