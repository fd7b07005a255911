"""A container's process: started in its own session (so that stopping the container
stops everything it started, as a PID namespace would), output to a log file, exit
codes reported as the container runtime reports them (``128 + signal`` when killed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

START_ERROR_EXIT_CODE = 128  # containerd's exit code for a process that never started


class StartError(Exception):
    """The process could not be started (the runtime's ``StartError``)."""


class ContainerProcess:
    """One running container process."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path
    ) -> None:
        """Start it; raises ``StartError`` when the executable cannot be run."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            try:
                self._popen = subprocess.Popen(
                    list(argv),
                    env=dict(env),
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                raise StartError(f'exec: "{argv[0]}": {error.strerror or error}') from error
        self.pid = self._popen.pid

    def poll(self) -> int | None:
        """The exit code once it has exited (``128 + n`` if signal n killed it), else None."""
        code = self._popen.poll()
        if code is None:
            return None
        self._kill_group(signal.SIGKILL)  # the container ends with its main process
        return 128 - code if code < 0 else code

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every process of the container."""
        self._kill_group(sig)

    def stop(self, grace_s: float) -> int:
        """SIGTERM, then SIGKILL after ``grace_s``; returns the exit code."""
        if self.poll() is None:
            self._kill_group(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.poll() is None:
                self._kill_group(signal.SIGKILL)
                self._popen.wait()
        code = self.poll()
        assert code is not None
        return code

    def _kill_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, sig)
