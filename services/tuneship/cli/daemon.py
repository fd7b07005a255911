"""Long-lived component servers, configured from the environment (the container entry).

Environment (read here, once, and passed down):

- ``TUNESHIP_STORE`` and ``TUNESHIP_S3_*``: the artifact store (see docs/store.md).
- ``TUNESHIP_WORK_DIR``: scratch space of a stage service (default ``/tmp/tuneship``).
- ``TUNESHIP_CAPACITY``: tasks a stage service runs at once (default 1).
- ``TUNESHIP_STATE_URL``: the controller's database (default SQLite under the data dir).
- ``TUNESHIP_WORKERS``: ``train=host:port,merge=host:port,export=host:port,publish=host:port``.
- ``TUNESHIP_LIMITS``: per-stage concurrency, e.g. ``train=4,merge=2`` (default 1 for a
  static stage; a pool's Ready pods times their capacity otherwise).
- ``TUNESHIP_PROVIDERS``, ``TUNESHIP_K8S_NAMESPACE``, ``TUNESHIP_JOB_TEMPLATES``,
  ``TUNESHIP_POOLS``, ``TUNESHIP_POOL_CAPACITY``, ``TUNESHIP_UNSCHEDULABLE_TIMEOUT_S``,
  ``TUNESHIP_START_TIMEOUT_S``: where stages run in a cluster (docs/kubernetes.md).
- ``TUNESHIP_MAX_UPLOAD_GIB``: the largest input ``tuneship submit`` may upload through
  the controller (default 20).
- ``TUNESHIP_HEARTBEAT_TIMEOUT_S``: a stage stream silent this long is retried (60).
- ``TUNESHIP_UNREACHABLE_TIMEOUT_S``: how long a stage waits for workers that do not
  answer (restarting, scaling up) before it fails (600); waiting uses no attempts.
- ``TUNESHIP_RETRY_ATTEMPTS``, ``TUNESHIP_RETRY_BACKOFF_S``: attempts per stage for
  transient failures (4) and the first backoff, doubling after each (2).
- ``TUNESHIP_TASK_ID``, ``TUNESHIP_ONCE_GRACE_S``: the one task of ``serve --once``.
- ``TUNESHIP_METRICS_PORT``: the controller's Prometheus ``/metrics`` port (default
  9090; empty: not served).
- ``OLLAMA_HOST``: the Ollama sidecar of the serving service.
- ``TUNESHIP_SERVING_SYNC_S``: how often a serving replica picks up models published
  on the others (default 30; 0: only at start and on demand).
- ``TUNESHIP_SERVING_BACKEND``: ``ollama`` (default, the sidecar) or ``llama-server``
  (models served by the pinned llama.cpp in the serving process itself).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tuneship.cli.kube_env import kube_settings, number, numbers, pairs
from tuneship.common.errors import EXIT_FAILED, EXIT_OK, InvalidInput, exit_code_of
from tuneship.common.settings import Settings
from tuneship.common.stages import COMPONENTS, PIPELINE, STAGES
from tuneship.common.stagework import StageContext
from tuneship.common.store import StoreSettings, open_store
from tuneship.common.toolchain import find_toolchain
from tuneship.common.wire import StageServicer
from tuneship.controller.app import ControllerSettings, start_controller
from tuneship.controller.inputs import UploadSettings, input_uploader
from tuneship.controller.scheduler import RetryPolicy


def controller_settings(env: Mapping[str, str], host: str, port: int) -> ControllerSettings:
    """The controller's settings from the environment."""
    settings = Settings.from_env(env)
    kinds = pairs(env.get("TUNESHIP_PROVIDERS", ""), "TUNESHIP_PROVIDERS")
    kube = kube_settings(env, kinds)
    workers = pairs(env.get("TUNESHIP_WORKERS", ""), "TUNESHIP_WORKERS")
    static = [s for s in STAGES if kinds.get(s, "static") == "static"]
    missing = [s for s in static if s not in workers]
    if missing:
        raise InvalidInput(
            f"no address for {', '.join(missing)}", where="TUNESHIP_WORKERS",
            hint=",".join(f"{s.name}={s.component}:50051" for s in PIPELINE if s.name in missing),
        )  # fmt: skip
    # Static stages default to one attempt at a time; the others to their capacity.
    limits = {**dict.fromkeys(static, 1),
              **numbers(env.get("TUNESHIP_LIMITS", ""), "TUNESHIP_LIMITS")}  # fmt: skip
    state = env.get("TUNESHIP_STATE_URL")
    if not state:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        state = f"sqlite:///{settings.data_dir.resolve() / 'state.db'}"
    metrics_port = env.get("TUNESHIP_METRICS_PORT", "9090")
    return ControllerSettings(
        state_url=state, workers=workers, limits=limits, providers=kinds, kube=kube,
        heartbeat_timeout_s=number(env, "TUNESHIP_HEARTBEAT_TIMEOUT_S", 60.0),
        unreachable_timeout_s=number(env, "TUNESHIP_UNREACHABLE_TIMEOUT_S", 600.0),
        retry=RetryPolicy(
            max_attempts=int(number(env, "TUNESHIP_RETRY_ATTEMPTS", 4)),
            initial_backoff_s=number(env, "TUNESHIP_RETRY_BACKOFF_S", 2.0),
        ),
        host=host, port=port, metrics_port=int(metrics_port) if metrics_port else None,
    )  # fmt: skip


def serve_component(
    component: str, host: str, port: int, env: Mapping[str, str], once: bool = False
) -> int:
    """Start ``component`` and block until SIGTERM/SIGINT; returns the exit code.

    ``once``: serve only the task named by ``TUNESHIP_TASK_ID`` (a Job pod) and return
    when its end has been streamed to the controller, or ``TUNESHIP_ONCE_GRACE_S``
    (default 600) after it ended if nobody came for it. The code is 0 when it
    succeeded, ``EXIT_INVALID_INPUT`` when no retry can help, 1 otherwise.
    """
    if component not in ("controller", *COMPONENTS):
        raise InvalidInput(f"unknown component {component!r}", where="COMPONENT",
                           hint=f"one of controller, {', '.join(COMPONENTS)}")  # fmt: skip
    task_id = env.get("TUNESHIP_TASK_ID", "") if once else ""
    if once and (component == "controller" or not task_id):
        raise InvalidInput(
            "--once serves one stage task: it needs a stage component and TUNESHIP_TASK_ID",
            where="--once", hint="the controller sets TUNESHIP_TASK_ID in each Job it creates",
        )  # fmt: skip
    settings = Settings.from_env(env)
    store = open_store(StoreSettings.from_env(env))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with ExitStack() as stack:
        if component == "controller":
            controller = start_controller(
                controller_settings(env, host, port),
                input_uploader(
                    store,
                    UploadSettings(
                        max_bytes=int(number(env, "TUNESHIP_MAX_UPLOAD_GIB", 20) * 2**30)
                    ),
                ),
            )
            stack.callback(controller.stop)
            stop.wait()
            return EXIT_OK
        # Imported only for a stage service: the stage packages pull in torch and
        # transformers, which the controller (and its image) never needs.
        from tuneship.cli.embedded import component_server

        work_root = Path(env.get("TUNESHIP_WORK_DIR", "/tmp/tuneship"))
        backend = replicas = None
        if component == "serving":
            from tuneship.serving.replicas import DEFAULT_SYNC_S, start_replica_sync

            kind = env.get("TUNESHIP_SERVING_BACKEND", "ollama")
            backend = _serving_backend(kind, env, settings, stack)
            # Every current model is on this replica before its gRPC health says SERVING.
            replicas = start_replica_sync(
                StageContext(store, work_root), backend,
                number(env, "TUNESHIP_SERVING_SYNC_S", DEFAULT_SYNC_S),
            )  # fmt: skip
            stack.callback(replicas.stop)
        toolchain = find_toolchain(settings).require_all() if component == "converter" else None
        server, stage = component_server(
            component, store, work_root, toolchain=toolchain, backend=backend, host=host,
            port=port, capacity=int(env.get("TUNESHIP_CAPACITY", "1")), replicas=replicas,
        )  # fmt: skip
        stack.callback(server.stop)
        if not once:
            stop.wait()
            return EXIT_OK
        stage.only_task = task_id
        return _serve_once(
            stage, task_id, stop, number(env, "TUNESHIP_ONCE_GRACE_S", 600.0),
            keeps_progress=component == "trainer",
        )  # fmt: skip


def _serve_once(
    stage: StageServicer,
    task_id: str,
    stop: threading.Event,
    grace_s: float,
    keeps_progress: bool,
) -> int:
    """Wait for the one task to end and reach the controller; its exit code.

    On SIGTERM (preemption, eviction, the Job deleted) a task that ``keeps_progress``
    (training) saves a checkpoint at the end of its current step and ends; any other
    task is cancelled at once. The wait has no limit of its own: the kubelet's SIGKILL
    at the end of the pod's termination grace period is the limit."""
    ended_at: float | None = None
    while not stop.is_set():
        if stage.delivered.wait(0.5):
            break
        finished = stage.outcome(task_id)
        if finished is not None:
            ended_at = ended_at or time.monotonic()
            if time.monotonic() - ended_at > grace_s:
                break
    else:
        if not keeps_progress or not stage.tasks.request_stop(task_id):
            stage.tasks.cancel(task_id)
        while stage.outcome(task_id) is None:
            time.sleep(0.2)
        stage.delivered.wait(2.0)  # let the controller read why it ended
        return EXIT_FAILED
    finished = stage.outcome(task_id)
    return exit_code_of(finished.error if finished is not None else None)


def _serving_backend(
    kind: str, env: Mapping[str, str], settings: Settings, stack: ExitStack
) -> Any:
    from tuneship.serving import LlamaServerBackend, OllamaBackend

    if kind == "ollama":
        return stack.enter_context(OllamaBackend(env.get("OLLAMA_HOST", "http://127.0.0.1:11434")))
    if kind == "llama-server":
        work = Path(env.get("TUNESHIP_WORK_DIR", "/tmp/tuneship")) / "serving"
        return stack.enter_context(LlamaServerBackend(find_toolchain(settings), work))
    raise InvalidInput(f"unknown serving backend {kind!r}", where="TUNESHIP_SERVING_BACKEND",
                       hint="ollama or llama-server")  # fmt: skip
