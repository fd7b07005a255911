"""A training run killed with SIGKILL resumes and ends exactly like an uninterrupted run.

It is killed in its second epoch (64 conversations, batches of 2: 32 steps an epoch),
where the batch order must not depend on what the first epoch drew."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TUNESHIP = str(Path(sys.executable).parent / "tuneship")
STEPS, SAVE_EVERY = 40, 6
KILL_AFTER = 36  # the last checkpoint, 4 steps into the second epoch


def write_spec(tmp_path: Path, base: Path, data: Path) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""apiVersion: tuneship/v1
metadata: {{name: resume}}
model: {{base: {base}}}
dataset: {{train: {data / "train.jsonl"}, eval_fraction: 0.0}}
train:
  max_steps: {STEPS}
  save_steps: {SAVE_EVERY}
  learning_rate: 0.002
  per_device_train_batch_size: 2
  lora: {{lora_dropout: 0.1}}
""",
        encoding="utf-8",
    )
    return spec


def losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["loss"]) for row in rows]


def checkpoint_written(partial: Path, step: int) -> bool:
    files = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
    checkpoint = partial / "checkpoints" / f"checkpoint-{step}"
    return all((checkpoint / name).is_file() for name in files)


def test_kill_and_resume_matches_an_uninterrupted_run(
    tmp_path: Path, tiny_chatml: Path, sample_data: Path
) -> None:
    spec = write_spec(tmp_path, tiny_chatml, sample_data / "chat")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    subprocess.run([TUNESHIP, "train", str(spec), "--out", str(straight)], check=True, timeout=300)

    command = [TUNESHIP, "train", str(spec), "--out", str(resumed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = resumed.with_name("resumed.partial")
    deadline = time.monotonic() + 240
    while not checkpoint_written(partial, KILL_AFTER) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert not resumed.exists() and checkpoint_written(partial, KILL_AFTER)

    subprocess.run(command, check=True, timeout=300)
    expected, got = losses(straight), losses(resumed)
    assert [step for step, _ in got] == list(range(1, STEPS + 1))
    assert [step for step, _ in got] == [step for step, _ in expected]
    for (step, want), (_, have) in zip(expected, got, strict=True):
        assert have == pytest.approx(want, rel=1e-5), f"step {step}"
    manifest = json.loads((resumed / "training-manifest.json").read_text())
    assert manifest["metrics"]["steps"] == STEPS
