"""One data directory, one controller: a second ``tuneship run`` on a directory in use is
refused with the holder's pid, and a killed holder leaves no stale lock."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tuneship.cli.embedded import data_dir_lock
from tuneship.common.errors import FailedPrecondition

pytestmark = pytest.mark.e2e
TUNESHIP = str(Path(sys.executable).parent / "tuneship")

HOLD = """
import sys, time
from pathlib import Path
from tuneship.cli.embedded import data_dir_lock
with data_dir_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_run_on_a_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(data_dir)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        second = subprocess.run([TUNESHIP, "run", "--data-dir", str(data_dir)],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert second.returncode == 2
        assert f"{data_dir} is in use by tuneship (pid {holder.pid})" in second.stderr
        assert "--data-dir" in second.stderr and "Traceback" not in second.stderr
        assert not (data_dir / "quickstart").exists()  # it wrote nothing there
        with pytest.raises(FailedPrecondition), data_dir_lock(data_dir):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:  # the kernel dropped the killed holder's lock
        try:
            with data_dir_lock(data_dir):
                break
        except FailedPrecondition:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_an_unusable_data_dir_or_store_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    # A file where a directory must be: refused even to root, like a read-only or full
    # filesystem (tests run as root, so permissions would not do).
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    unusable = subprocess.run([TUNESHIP, "run", "--data-dir", str(blocker / "run")],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert unusable.returncode == 2, unusable.stderr
    assert f"--data-dir: cannot use {blocker / 'run'} as the data directory" in unusable.stderr
    assert "hint:" in unusable.stderr and "Traceback" not in unusable.stderr

    data_dir = tmp_path / "run"
    data_dir.mkdir()
    (data_dir / "store").write_text("a file where the store's directory goes")
    read_only = subprocess.run([TUNESHIP, "run", "--data-dir", str(data_dir)],
                               capture_output=True, text=True, timeout=300)  # fmt: skip
    assert read_only.returncode == 2, read_only.stderr
    assert f"to local store {data_dir / 'store'}" in read_only.stderr
    assert "must be writable" in read_only.stderr
    # Embedded mode has no server log to point at, and shows no traceback.
    assert "server log" not in read_only.stderr and "Traceback" not in read_only.stderr
