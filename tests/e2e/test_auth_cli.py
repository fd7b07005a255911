"""Tokens from the command line: ``tuneship serve`` refuses to listen beyond loopback
without one (unless ``--insecure``), and ``tuneship list`` authenticates with
``--token-file`` / ``TUNESHIP_TOKEN`` and says what to do without one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tuneship.common.llama_server import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
TUNESHIP = str(Path(sys.executable).parent / "tuneship")
TOKEN = "s3cret-user-token-0123"
WORKER_TOKEN = "s3cret-worker-token-4567"


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TUNESHIP_")}
    return {**clean, "TUNESHIP_STORE": f"local:{tmp_path / 'store'}",
            "TUNESHIP_DATA_DIR": str(tmp_path / "data"), "TUNESHIP_METRICS_PORT": "",
            "TUNESHIP_WORKERS": "train=h:1,merge=h:1,export=h:1,publish=h:1", **extra}  # fmt: skip


def tuneship(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TUNESHIP, *args], capture_output=True, text=True, timeout=90,
                          env=env, cwd=cwd)  # fmt: skip


@contextmanager
def serving(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[str]:
    """``tuneship serve ARGS`` until its health service answers; yields its address."""
    port = free_port()
    log = (cwd / f"serve-{port}.log").open("w")
    process = subprocess.Popen([TUNESHIP, "serve", *args, "--port", str(port)],
                               env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (cwd / log.name).read_text()
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


@pytest.mark.parametrize(
    ("component", "variable"),
    [("controller", "TUNESHIP_API_TOKENS"), ("merger", "TUNESHIP_WORKER_TOKEN")],
)
def test_serving_beyond_loopback_without_a_token_is_refused(
    tmp_path: Path, component: str, variable: str
) -> None:
    done = tuneship(["serve", component, "--host", "0.0.0.0", "--port", "0"],
                    environment(tmp_path), tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "refusing to serve" in done.stderr and "0.0.0.0" in done.stderr
    assert f"{variable}_FILE" in done.stderr and "--insecure" in done.stderr
    assert "Traceback" not in done.stderr


def test_insecure_serves_beyond_loopback_on_purpose(tmp_path: Path) -> None:
    with serving(["controller", "--host", "0.0.0.0", "--insecure"], environment(tmp_path),
                 tmp_path) as address:  # fmt: skip
        listed = tuneship(["list", "--controller", address, "--json"], environment(tmp_path),
                          tmp_path)  # fmt: skip
        assert listed.returncode == 0, listed.stderr


def test_list_with_a_token_file_and_without_a_token(tmp_path: Path) -> None:
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"old-token-to-retire\n{TOKEN}\n")
    server_env = environment(tmp_path, TUNESHIP_API_TOKENS_FILE=str(tokens),
                             TUNESHIP_WORKER_TOKEN=WORKER_TOKEN)  # fmt: skip
    mine = tmp_path / "token"
    mine.write_text(TOKEN + "\n")
    with serving(["controller", "--host", "0.0.0.0"], server_env, tmp_path) as address:
        client_env = environment(tmp_path)
        listed = tuneship(["list", "--controller", address, "--token-file", str(mine), "--json"],
                          client_env, tmp_path)  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert '"pipelines": []' in listed.stdout
        by_env = tuneship(["list", "--controller", address],
                          {**client_env, "TUNESHIP_TOKEN": TOKEN}, tmp_path)  # fmt: skip
        assert by_env.returncode == 0, by_env.stderr
        refused = tuneship(["list", "--controller", address], client_env, tmp_path)
        assert refused.returncode == 2
        assert "UNAUTHENTICATED" in refused.stderr and "--token-file" in refused.stderr
        assert "TUNESHIP_TOKEN" in refused.stderr and "Traceback" not in refused.stderr
        worker = tuneship(["get", "x", "--controller", address, "--token", WORKER_TOKEN],
                          client_env, tmp_path)  # fmt: skip
        assert worker.returncode == 2 and "PERMISSION_DENIED" in worker.stderr
        for done in (listed, by_env, refused, worker):
            assert TOKEN not in done.stdout + done.stderr
            assert WORKER_TOKEN not in done.stdout + done.stderr
