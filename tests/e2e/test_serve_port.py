"""``tuneship serve`` on a port that is taken says so, without a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
TUNESHIP = str(Path(sys.executable).parent / "tuneship")


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "TUNESHIP_STORE": f"local:{tmp_path / 'store'}",
               "TUNESHIP_METRICS_PORT": "",
               "TUNESHIP_WORKERS": "train=h:1,merge=h:1,export=h:1,publish=h:1"}  # fmt: skip
        done = subprocess.run(
            [TUNESHIP, "serve", "controller", "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "--port" in done.stderr and "Traceback" not in done.stderr
