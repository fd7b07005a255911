"""`tuneship validate` driven like a user would: a misspelt template family."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

TUNESHIP = str(Path(sys.executable).parent / "tuneship")


def test_validate_names_an_unknown_template_family_and_the_known_ones(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: tuneship/v1\nmetadata:\n  name: demo\nmodel:\n  base: /models/base\n"
        "dataset:\n  train: data.jsonl\ntemplate:\n  family: chatlm\n"
    )
    done = subprocess.run(
        [TUNESHIP, "validate", str(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},  # one problem, one line
    )
    assert done.returncode == 2
    assert "spec.yaml:9: template.family: unknown chat template family 'chatlm'" in done.stderr
    assert "chatml, gemma, llama2, llama3, mistral, phi3, zephyr" in done.stderr


def run_validate(spec: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TUNESHIP, "validate", str(spec)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})  # fmt: skip


def test_validate_checks_the_local_inputs_it_can_reach(tmp_path: Path, tiny_chatml: Path) -> None:
    good = (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    )
    (tmp_path / "train.jsonl").write_text(f"{good}\n{good[:-1]}\n{good}\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("apiVersion: tuneship/v1\nmetadata: {name: demo}\n"
                    "model: {base: ./no-such-model}\ndataset: {train: train.jsonl}\n")  # fmt: skip
    done = run_validate(spec)
    assert done.returncode == 2 and ": ok" not in done.stdout
    assert f"model.base: {tmp_path / 'no-such-model'} is not a directory" in done.stderr
    assert "train.jsonl:2" in done.stderr  # the broken record, found by reading the file

    (tmp_path / "train.jsonl").write_text(f"{good}\n{good}\n")
    spec.write_text(
        f"apiVersion: tuneship/v1\nmetadata: {{name: demo}}\n"
        f"model: {{base: {tiny_chatml}}}\ndataset: {{train: train.jsonl}}\n"
    )
    done = run_validate(spec)
    assert done.returncode == 0, done.stderr
    assert f"{spec}: ok" in done.stdout


def test_validate_says_which_inputs_it_could_not_check(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: tuneship/v1\nmetadata: {name: demo}\n"
        "model: {base: hf://org/model}\ndataset: {train: s3://bucket/train.jsonl}\n"
    )
    done = run_validate(spec)
    assert done.returncode == 0, done.stderr
    assert "not checked from here: model.base hf://org/model" in done.stdout
    assert "not checked from here: dataset.train s3://bucket/train.jsonl" in done.stdout
