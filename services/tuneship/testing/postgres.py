"""A throwaway PostgreSQL server on loopback for tests, from Debian's postgresql package.

``make postgres-server`` installs the package where it is missing. The server lives in
a temporary directory, listens on a free port of 127.0.0.1 only (no Unix socket), trusts
every local TCP connection and runs with fsync off: it is fast, private to the test
session and gone afterwards. PostgreSQL refuses to run as root, so as root (CI
containers) it runs as Debian's ``postgres`` system user.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tuneship.common.llama_server import free_port

SYSTEM_USER = "postgres"
SUPERUSER = "tuneship"
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "32MB",
    "wal_level": "minimal",  # no replicas: a new database is copied, not written to WAL
    "max_wal_senders": "0",
}


def find_postgres_bin() -> Path:
    """The directory holding ``initdb`` and ``postgres`` (the newest Debian version,
    else the ones on PATH); a RuntimeError that names ``make postgres-server`` if none."""
    debian = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/postgres")),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1]
    found = shutil.which("postgres")
    if found and shutil.which("initdb"):
        return Path(found).parent
    raise RuntimeError(
        "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/postgres and "
        "no postgres on PATH): run `make postgres-server` (make test does it), which "
        "installs Debian's postgresql package"
    )


class PostgresServer:
    """One PostgreSQL server in ``root`` on ``127.0.0.1:port``.

    :meth:`stop` is a fast shutdown (clients are disconnected, as in a real restart) and
    :meth:`start` brings it back on the same port with the same data.
    """

    def __init__(self, root: Path, bin_dir: Path, port: int | None = None) -> None:
        self.root = root
        self.bin_dir = bin_dir
        self.port = port or free_port()
        self.data_dir = root / "data"
        self.log_path = root / "postgres.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._as_user = _run_as_prefix()

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3 driver) for ``database`` on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """A libpq connection string for ``database`` (for psycopg directly)."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    def init(self) -> None:
        """Create the cluster (initdb) with trust authentication on 127.0.0.1 only."""
        self.data_dir.mkdir(mode=0o700)
        _give_to_system_user(self.root)
        command = [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                   "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]  # fmt: skip
        done = subprocess.run(
            [*self._as_user, *command], cwd=self.root, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr or done.stdout}")
        # Only TCP from 127.0.0.1, nothing else (initdb's default also trusts ::1 and local).
        (self.data_dir / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")

    def start(self, timeout_s: float = 60) -> None:
        """Start the server and wait until it accepts connections."""
        if self._process is not None:
            raise RuntimeError("the PostgreSQL server is running already")
        options = [f"-c{key}={value}" for key, value in _SETTINGS.items()]
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir),
                   "-p", str(self.port), *options]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [*self._as_user, *command], cwd=self.root, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"postgres exited at start ({self.log_path}):\n{self._tail()}")
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"postgres did not answer in {timeout_s:.0f}s") from None
                time.sleep(0.05)

    def stop(self, timeout_s: float = 30) -> None:
        """Fast shutdown: open sessions are ended, the data stays (idempotent)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down for ``down_s`` seconds, start again."""
        self.stop()
        time.sleep(down_s)
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def create_database(self) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}" STRATEGY = FILE_COPY')
        return self.url(name)

    def _tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A fresh server in a new temporary directory, removed when the block ends."""
    bin_dir = find_postgres_bin()
    # Under /tmp (world-traversable), not pytest's per-user tmp dir: as root, the server
    # runs as another user that must reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="tuneship-pg-"))
    server = PostgresServer(root, bin_dir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _run_as_prefix() -> list[str]:
    """The command prefix that runs a server binary as a user PostgreSQL accepts."""
    if os.getuid() != 0:
        return []
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root and there is no {SYSTEM_USER!r} user to run PostgreSQL as: "
            "run `make postgres-server` (Debian's package creates it)"
        ) from None
    # setpriv execs (no fork), so signals sent to the child reach postgres itself.
    return ["setpriv", f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}", "--init-groups", "--"]


def _give_to_system_user(root: Path) -> None:
    if os.getuid() != 0:
        return
    user = pwd.getpwnam(SYSTEM_USER)
    for path in (root, *root.rglob("*")):
        os.chown(path, user.pw_uid, user.pw_gid)
