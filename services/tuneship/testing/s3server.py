"""A real S3 server process on loopback for tests: moto's standalone server.

moto runs from its own virtual environment (``.venv-s3``, made by ``make test``)
because its botocore and the kubernetes client want different python-dateutil
versions. The server keeps everything in memory and accepts any credentials.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuneship.common.errors import ToolchainMissing, Unavailable

ACCESS_KEY = "tuneship-test"
SECRET_KEY = "tuneship-test-secret"
S3_VENV = ".venv-s3"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_moto_server(repo_root: Path, explicit: Path | None = None) -> Path:
    """``explicit`` if given, else ``<repo_root>/.venv-s3/bin/moto_server``."""
    path = explicit or repo_root / S3_VENV / "bin" / "moto_server"
    if not path.is_file():
        raise ToolchainMissing(
            f"moto_server not found at {path}",
            hint="run `make s3-venv` (make test does it) to create .venv-s3",
        )
    return path


class S3ServerProcess:
    """One moto server on ``127.0.0.1:port``; :meth:`stop` and :meth:`start` again to
    simulate an outage (its contents are lost on restart)."""

    def __init__(self, executable: Path, port: int | None = None) -> None:
        self.executable = executable
        self.port = port or free_port()
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self._process: subprocess.Popen[bytes] | None = None
        self._log = Path(tempfile.mkstemp(prefix="moto-", suffix=".log")[1])

    @property
    def endpoint(self) -> str:
        """``host:port`` as the S3 clients want it (plain HTTP)."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> S3ServerProcess:
        """Start the server and wait until it answers; Unavailable if it does not."""
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.executable), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://{self.endpoint}/", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        tail = self._log.read_text(errors="replace")[-2000:]
        raise Unavailable(f"moto server on {self.endpoint} did not start:\n{tail}")

    def stop(self) -> None:
        """Stop the server (and wait for it), if it runs."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def pause(self) -> None:
        """SIGSTOP the server: it still accepts connections (the kernel does) but answers
        nothing, like a server that hangs or a network that drops packets."""
        assert self._process is not None, "the server is not running"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`: requests that waited are answered."""
        assert self._process is not None, "the server is not running"
        self._process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        self._log.unlink(missing_ok=True)


@contextmanager
def s3_server(executable: Path, port: int | None = None) -> Iterator[S3ServerProcess]:
    """A started moto server, stopped on exit."""
    server = S3ServerProcess(executable, port)
    try:
        yield server.start()
    finally:
        server.close()
