"""The committed gRPC stubs are exactly what `make proto` generates from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto").rglob("*.proto"))
    command = [
        sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos,
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, timeout=120)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc generated nothing"
    committed = ROOT / "services"
    drift = [
        str(rel)
        for rel in generated
        if (tmp_path / rel).read_bytes() != (committed / rel).read_bytes()
    ]
    assert drift == [], f"stale stubs (run `make proto` and commit): {drift}"
