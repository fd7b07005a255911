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
