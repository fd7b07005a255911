"""``tuneship serve COMPONENT --print-config``: what an operator checks before starting a
pod. It prints each setting with its origin, masks secrets and starts nothing; a bad
value is one line naming the variable (exit 2, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]
TUNESHIP = str(Path(sys.executable).parent / "tuneship")


def tuneship(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TUNESHIP_")}
    return subprocess.run([TUNESHIP, *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=50)  # fmt: skip


def test_print_config_shows_origins_masks_secrets_and_starts_nothing(tmp_path: Path) -> None:
    key_file = tmp_path / "secret-key"
    key_file.write_text("file-secret-b41e\n")
    env = {
        "TUNESHIP_S3_SECRET_KEY_FILE": str(key_file),
        "TUNESHIP_S3_ACCESS_KEY": "env-access-7d20",
        "TUNESHIP_STATE_URL": "postgresql+psycopg://ts:db-pw-93ab@db:5432/ts",
        "TUNESHIP_WORKERS": "train=t:1,merge=m:1,export=c:1,publish=s:1",
        "TUNESHIP_DATA_DIR": str(tmp_path / "data"),
        "TUNESHIP_STROE": "s3://typo",
    }
    done = tuneship("serve", "controller", "--print-config", env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for secret in ("file-secret-b41e", "env-access-7d20", "db-pw-93ab"):
        assert secret not in out + done.stderr
    lines = {line.split("=", 1)[0]: line for line in out.splitlines() if "=" in line}
    assert lines["TUNESHIP_S3_SECRET_KEY"].startswith("TUNESHIP_S3_SECRET_KEY=******** ")
    assert lines["TUNESHIP_S3_SECRET_KEY"].endswith(f"# file {key_file} "
                                                    "(TUNESHIP_S3_SECRET_KEY_FILE)")  # fmt: skip
    assert lines["TUNESHIP_S3_ACCESS_KEY"].endswith("# env TUNESHIP_S3_ACCESS_KEY")
    assert "postgresql+psycopg://ts:********@db:5432/ts" in lines["TUNESHIP_STATE_URL"]
    assert lines["TUNESHIP_RETRY_ATTEMPTS"].split("#")[1].strip() == "default"
    assert "did you mean TUNESHIP_STORE" in out
    assert not (tmp_path / "data").exists()  # nothing started: no state database made


def test_a_bad_value_is_one_error_naming_the_variable(tmp_path: Path) -> None:
    done = tuneship("serve", "controller", "--print-config",
                    env={"TUNESHIP_S3_SECURE": "ture"})  # fmt: skip
    assert done.returncode == 2
    assert "TUNESHIP_S3_SECURE: 'ture' is not a boolean: use true/false/1/0" in done.stderr
    assert "Traceback" not in done.stderr and "pydantic" not in done.stderr
    served = tuneship("serve", "trainer", "--port", "0", env={"TUNESHIP_CAPACITY": "0"})
    assert served.returncode == 2 and "TUNESHIP_CAPACITY: '0' is too small" in served.stderr
