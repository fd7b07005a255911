"""``tuneship serve console`` as a process: it serves, asks for a login when the
controller cannot vouch for loopback, and a taken port is a clear error."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tuneship.testing.kubecluster import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]
TUNESHIP = str(Path(sys.executable).parent / "tuneship")


def test_the_console_process_serves_and_asks_for_a_login(tmp_path: Path) -> None:
    port = free_port()
    # No controller answers there: no vouching for "no login", so a login is asked for.
    controller = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [TUNESHIP, "serve", "console", "--host", "127.0.0.1", "--port", str(port),
         "--controller", controller],
        stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=dict(os.environ),
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(url + "/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the console did not start"
                time.sleep(0.2)
        assert health.text == "ok\n"
        assert httpx.get(url + "/", timeout=10).status_code == 401
        login = httpx.get(url + "/login", timeout=10)
        assert login.status_code == 200 and 'name="token"' in login.text
    finally:
        process.terminate()
        code = process.wait(timeout=20)
    assert code == 0
    assert f"console on {url} (controller {controller})" in (process.stderr.read() or "")


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [TUNESHIP, "serve", "console", "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=dict(os.environ),
        )  # fmt: skip
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
