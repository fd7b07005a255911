"""``PodWorker``: one pod's life on the fake node, read top to bottom like the kubelet's
pod worker: init containers in order (sidecars started and left running), then the
main containers, then supervision (exits, restarts per ``restartPolicy``, readiness
probes) until every main container has finished for good or the pod is deleted; then
the remaining containers are stopped (SIGTERM, SIGKILL after the grace period) and
the final status is written. A deleted pod is removed from the API at the end.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneship.testing.kube import clock, dns, env
from tuneship.testing.kube import resources as r
from tuneship.testing.kube.podstatus import ContainerRun, pod_status
from tuneship.testing.kube.probes import ReadinessProbe
from tuneship.testing.kube.process import START_ERROR_EXIT_CODE, ContainerProcess, StartError
from tuneship.testing.kube.store import DeleteOptions, ObjectStore

log = logging.getLogger(__name__)
_TICK_S = 0.05


class PodWorker:
    """Runs one pod's containers as local processes (see the module docstring)."""

    def __init__(
        self,
        pod: dict[str, Any],
        settings: Any,
        store: ObjectStore,
        ip: str,
        directory: Path,
        lookup: env.DataLookup,
        resolve: dns.Resolver | None = None,
    ) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        self.uid, self.namespace, self.name = meta["uid"], meta["namespace"], meta["name"]
        self.ip, self.directory = ip, directory
        self.pids: list[int] = []
        self.done = threading.Event()
        self._pod = pod
        self._settings, self._store, self._lookup = settings, store, lookup
        self._resolve = resolve
        self._restart_policy = spec.get("restartPolicy", "Always")
        self._start_time = clock.timestamp()
        self._stop = threading.Event()
        self._grace_s: float | None = None
        self.runs = [
            self._run_for(c, "sidecar" if c.get("restartPolicy") == "Always" else "init")
            for c in spec.get("initContainers") or []
        ] + [self._run_for(c, "main") for c in spec["containers"]]
        self._thread = threading.Thread(target=self._live, daemon=True, name=f"pod-{self.name}")

    def _run_for(self, container: dict[str, Any], role: str) -> ContainerRun:
        probe = container.get("readinessProbe")
        run = ContainerRun(container, role, self.directory / f"{container['name']}.log")
        if probe and role != "init":
            run.probe = ReadinessProbe(probe, container, self._settings.probe_period_s)
        if role == "init":
            run.reason = "PodInitializing"
        return run

    # --- control from outside ----------------------------------------------------

    def start(self) -> None:
        """Begin the pod's life in a thread."""
        self._thread.start()

    def request_stop(self, grace_s: float) -> None:
        """The pod was deleted: stop its containers within ``grace_s`` (capped)."""
        grace = min(grace_s, self._settings.grace_cap_s)
        self._grace_s = grace if self._grace_s is None else min(self._grace_s, grace)
        self._stop.set()

    def oom_kill(self, container: str | None = None, *, oom: bool = True) -> bool:
        """SIGKILL a running container as the OOM killer would (``oom=False``: a crash,
        reason ``Error``); False if none runs."""
        for run in self.runs:
            if run.state == "running" and run.process and container in (None, run.name):
                if container is None and run.role != "main":
                    continue
                run.oom = oom
                run.process.send(signal.SIGKILL)
                return True
        return False

    def log_file(self, container: str) -> tuple[Path, Callable[[], bool]] | None:
        """The container's log and whether it has stopped; None before it first started."""
        for run in self.runs:
            if run.name == container and run.log_path.exists():
                return run.log_path, lambda run=run: run.state != "running"
        return None

    def waiting_reason(self, container: str) -> str:
        """Why a container has not started (for the log endpoint's error)."""
        return next((run.reason for run in self.runs if run.name == container), "")

    def join(self, timeout_s: float) -> None:
        """Wait for the worker to finish."""
        self._thread.join(timeout_s)

    # --- the pod's life ----------------------------------------------------------

    def _live(self) -> None:
        try:
            self._publish()
            if self._run_init_containers():
                for run in (run for run in self.runs if run.role == "main"):
                    if not self._launch(run):
                        self._after_exit(run)  # it could not start: restart per policy
                self._supervise()
        except Exception:
            log.exception("fake kubelet: pod %s/%s failed unexpectedly", self.namespace, self.name)
        finally:
            self._shut_down()
            self.done.set()

    def _run_init_containers(self) -> bool:
        for run in (run for run in self.runs if run.role != "main"):
            while not self._stop.is_set():
                started = self._launch(run)
                if run.role == "sidecar" and started:
                    break
                while started and run.process and run.process.poll() is None:
                    if self._stop.wait(_TICK_S):
                        return False
                if started and run.process:
                    run.exited(run.process.poll() or 0)
                if run.succeeded:
                    break
                if self._restart_policy == "Never" or self._stop.is_set():
                    return False
                self._back_off(run)
                self._stop.wait(self._settings.restart_backoff_s)
                run.restart_at = None
        return not self._stop.is_set()

    def _launch(self, run: ContainerRun) -> bool:
        """Start ``run``'s process, retrying configuration and image errors until stopped.
        False if stopped first or the process could not start (then it is terminated)."""
        while not self._stop.is_set():
            pod = self._store.find(r.POD, self.namespace, self.name) or self._pod
            pod.setdefault("status", {})["podIP"] = self.ip
            try:
                spec_env = env.container_env(pod, run.spec, self._lookup)
                if self._resolve is not None:
                    spec_env = dns.resolve_env(spec_env, self.namespace, self._resolve)
                visible = {**spec_env, **self._settings.env}
                argv = env.argv(run.spec, self._settings.images, visible)
            except dns.Unresolved as error:
                run.waiting("ContainerCreating", str(error))
                self._publish()
                self._stop.wait(self._settings.probe_period_s)
                continue
            except (env.ContainerConfigError, env.ImageError) as error:
                image = isinstance(error, env.ImageError)
                run.waiting("ErrImagePull" if image else "CreateContainerConfigError", str(error))
                self._publish()
                self._stop.wait(self._settings.probe_period_s)
                continue
            run.env = {**self._settings.base_env, "HOSTNAME": self.name, **visible}
            try:
                process = ContainerProcess(argv, run.env, self.directory, run.log_path)
            except StartError as error:
                run.exited(START_ERROR_EXIT_CODE)
                run.reason, run.message = "StartError", str(error)
                self._publish()
                return False
            self.pids.append(process.pid)
            run.started(process)
            self._publish()
            return True
        return False

    def _supervise(self) -> None:
        while not self._stop.is_set():
            for run in self.runs:
                if run.state == "running" and run.process:
                    code = run.process.poll()
                    if code is not None:
                        run.exited(code)
                        self._after_exit(run)
                elif run.restart_at is not None and time.monotonic() >= run.restart_at:
                    run.restart_at = None
                    if not self._launch(run):
                        self._after_exit(run)
                if run.state == "running" and run.probe:
                    run.ready = run.probe.check(self.ip, run.env, self.directory, run.ready)
            mains = [run for run in self.runs if run.role == "main"]
            if all(run.state == "terminated" and run.restart_at is None for run in mains):
                return
            self._publish()
            self._stop.wait(_TICK_S)

    def _after_exit(self, run: ContainerRun) -> None:
        policy = self._restart_policy
        restart = run.role == "sidecar" or policy == "Always"
        restart = restart or (policy == "OnFailure" and run.exit_code != 0)
        if restart and not self._stop.is_set() and run.state == "terminated":
            self._back_off(run)
        self._publish()

    def _back_off(self, run: ContainerRun) -> None:
        run.last_terminated = run.terminated_state()
        run.restart_count += 1
        run.restart_at = time.monotonic() + self._settings.restart_backoff_s
        run.waiting("CrashLoopBackOff", f"back-off restarting failed container={run.name} "
                    f"pod={self.name}_{self.namespace}({self.uid})")  # fmt: skip

    def _shut_down(self) -> None:
        grace = self._grace_s if self._grace_s is not None else self._settings.grace_cap_s
        mains = [run for run in self.runs if run.role == "main"]
        others = [run for run in self.runs if run.role != "main"]
        for group in (mains, others):  # sidecars outlive the main containers, as in 1.29+
            running = [run for run in group if run.state == "running" and run.process]
            codes = _stop_all([run.process for run in running if run.process], grace)
            for run, code in zip(running, codes, strict=True):
                run.exited(code)
        for run in self.runs:
            run.restart_at = None  # a deleted pod restarts nothing
        mains_ok = all(run.succeeded for run in mains)
        self._publish("Succeeded" if mains_ok else "Failed")
        current = self._store.find(r.POD, self.namespace, self.name)
        if (
            current
            and current["metadata"]["uid"] == self.uid
            and current["metadata"].get("deletionTimestamp")
        ):
            self._store.delete(r.POD, self.namespace, self.name, DeleteOptions(grace_seconds=0))

    def _phase(self) -> str:
        mains = [run for run in self.runs if run.role == "main"]
        if any(run.state == "running" or run.restart_at is not None for run in mains):
            return "Running"
        if mains and all(run.state == "terminated" for run in mains):
            return "Succeeded" if all(run.succeeded for run in mains) else "Failed"
        return "Running" if any(run.state == "terminated" for run in mains) else "Pending"

    def _publish(self, phase: str | None = None) -> None:
        shown = phase or self._phase()

        def change(pod: dict[str, Any]) -> None:
            if pod["metadata"]["uid"] != self.uid:
                return  # a new pod with the same name: not ours
            previous = pod.get("status") or {}
            pod["status"] = pod_status(previous, self.runs, shown, self.ip, self._start_time)

        self._store.mutate(r.POD, self.namespace, self.name, change)


def _stop_all(processes: list[ContainerProcess], grace_s: float) -> list[int]:
    """SIGTERM every process, SIGKILL the ones still alive after ``grace_s``; exit codes."""
    for process in processes:
        if process.poll() is None:
            process.send(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.poll() is None for p in processes):
        time.sleep(0.02)
    return [process.stop(0) for process in processes]
