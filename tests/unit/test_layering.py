"""The layering in docs/services.md, checked by import-linter: cli -> services -> common."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports, "import-linter is a dev dependency; run `make venv`"
    done = subprocess.run([lint_imports], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken" in done.stdout


DOMAIN = ("common", "trainer", "merger", "converter", "serving", "controller", "quickstart")


def test_domain_modules_never_import_generated_protobuf() -> None:
    """Protobuf meets domain types only in servicer.py, codec.py and wire*.py modules."""
    package = ROOT / "services" / "tuneship"
    offenders = [
        str(path.relative_to(ROOT))
        for area in DOMAIN
        for path in (package / area).rglob("*.py")
        if "_pb2" in path.read_text()
        and path.name not in ("servicer.py", "codec.py")
        and not path.stem.startswith("wire")
    ]
    assert offenders == []
