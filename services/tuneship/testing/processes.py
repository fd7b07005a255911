"""Every tuneship component as its own ``tuneship serve`` process on loopback.

For tests that do to a cluster what happens to real ones: a component killed with
SIGKILL and started again on the same port (with its scratch space kept or, like a new
pod, empty), the S3 server paused. Artifacts go to a real S3 server process; the
controller's state is SQLite under its data directory unless a database URL is given.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tuneship.client import PipelineClient, PipelineInfo
from tuneship.common.llama_server import free_port
from tuneship.common.stages import PIPELINE
from tuneship.common.store import S3Store
from tuneship.testing.s3server import S3ServerProcess

TUNESHIP = str(Path(sys.executable).parent / "tuneship")
STAGE_OF = {s.component: s.name for s in PIPELINE}
"""Stage component → the stage it serves (``trainer`` → ``train``)."""


@dataclass
class Component:
    """One ``tuneship serve`` process: its port, environment and how many times it ran."""

    name: str
    port: int
    env: dict[str, str]
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}.{self.runs}.log"

    def start(self) -> None:
        self.runs += 1
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [TUNESHIP, "serve", self.name, "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Until its gRPC server answers; AssertionError with its log if it exits."""
        channel = grpc.insecure_channel(self.address)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                assert self.process is not None and self.process.poll() is None, (
                    f"{self.name} exited:\n{self.log.read_text(errors='replace')[-3000:]}"
                )
                try:
                    grpc.channel_ready_future(channel).result(timeout=1)
                    return
                except grpc.FutureTimeoutError:
                    continue
            raise AssertionError(f"{self.name} did not answer on {self.address}")
        finally:
            channel.close()

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or handed over."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)


@dataclass
class ProcessCluster:
    """A controller and the four stage services as processes, artifacts in ``s3``."""

    root: Path
    s3: S3ServerProcess
    bucket: str
    components: dict[str, Component] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        root: Path,
        s3: S3ServerProcess,
        *,
        state_url: str | None = None,
        env: Mapping[str, str] | None = None,
        controller_env: Mapping[str, str] | None = None,
    ) -> ProcessCluster:
        """Start everything and wait until each answers. ``env`` is added to every
        process's environment, ``controller_env`` to the controller's."""
        cluster = cls(root, s3, f"faults-{uuid.uuid4().hex[:12]}")
        (root / "logs").mkdir(parents=True, exist_ok=True)
        common = {
            **os.environ,
            "TUNESHIP_STORE": f"s3://{cluster.bucket}",
            "TUNESHIP_S3_ENDPOINT": s3.endpoint,
            "TUNESHIP_S3_ACCESS_KEY": s3.access_key,
            "TUNESHIP_S3_SECRET_KEY": s3.secret_key,
            "TUNESHIP_S3_SECURE": "0",
            "TUNESHIP_SERVING_BACKEND": "llama-server",
            "TUNESHIP_DATA_DIR": str(root / "controller"),
            **(env or {}),
        }
        for name in STAGE_OF:
            own = {**common, "TUNESHIP_WORK_DIR": str(root / "work" / name)}
            cluster.components[name] = Component(name, free_port(), own, root / "logs")
        workers = ",".join(f"{STAGE_OF[c]}={w.address}" for c, w in cluster.components.items())
        controller = {**common, "TUNESHIP_WORKERS": workers, "TUNESHIP_METRICS_PORT": "",
                      **({"TUNESHIP_STATE_URL": state_url} if state_url else {}),
                      **(controller_env or {})}  # fmt: skip
        cluster.components["controller"] = Component(
            "controller", free_port(), controller, root / "logs"
        )
        try:
            for component in cluster.components.values():
                component.start()
            for component in cluster.components.values():
                component.wait_ready()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def address(self) -> str:
        return self.components["controller"].address

    @property
    def client(self) -> PipelineClient:
        return PipelineClient(self.address)

    @property
    def store(self) -> S3Store:
        return S3Store(self.s3.endpoint, self.s3.access_key, self.s3.secret_key, self.bucket,
                       secure=False)  # fmt: skip

    def kill(self, component: str) -> None:
        self.components[component].kill()

    def restart(
        self, component: str, *, fresh_work_dir: bool = False, env: Mapping[str, str] | None = None
    ) -> None:
        """Start ``component`` again on its port; ``fresh_work_dir``: with empty scratch
        space, as a new pod would (a stage service then has only the store to go on);
        ``env``: changed settings (kept for later restarts)."""
        own = self.components[component]
        own.kill()
        own.env.update(env or {})
        if fresh_work_dir:
            work = Path(own.env["TUNESHIP_WORK_DIR"])
            own.env["TUNESHIP_WORK_DIR"] = str(work.with_name(f"{work.name}-{own.runs + 1}"))
        own.start()
        own.wait_ready()

    def submit(self, specs: Iterable[Path]) -> list[str]:
        """``tuneship submit`` as a user runs it; the new pipeline ids."""
        env = self.components["controller"].env
        done = subprocess.run(
            [TUNESHIP, "submit", *map(str, specs), "--controller", self.address],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return [line.split("\t")[0] for line in done.stdout.splitlines() if "\t" in line]

    def wait_for(self, pipeline_id: str, phases: set[str], timeout_s: float) -> PipelineInfo:
        """Poll until the pipeline is in one of ``phases`` (the controller may be down
        for a while: a refused call is tried again)."""
        deadline = time.monotonic() + timeout_s
        info: PipelineInfo | None = None
        while time.monotonic() < deadline:
            try:
                info = self.client.get(pipeline_id)
            except Exception:
                info = None
            if info is not None and info.phase in phases:
                return info
            time.sleep(0.25)
        raise AssertionError(f"{pipeline_id} is not {phases}: {info and info.as_dict()}\n"
                             f"{self.logs_tail()}")  # fmt: skip

    def logs_tail(self, chars: int = 3000) -> str:
        """The end of every process's logs, for assertion messages."""
        parts = []
        for log in sorted((self.root / "logs").glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def heal(self) -> None:
        """Start again every component that is not running (after a failed test)."""
        for name, component in self.components.items():
            if component.process is None or component.process.poll() is not None:
                self.restart(name)

    def stop(self) -> None:
        for component in self.components.values():
            component.stop()
