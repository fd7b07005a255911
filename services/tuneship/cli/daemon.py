"""Long-lived component servers, configured from the environment (the container entry).

The environment is read here, once, into a ``TuneshipEnv`` (every variable, its type
and meaning: ``tuneship.common.settings.model``, and the settings reference in
docs/services.md; docs/kubernetes.md for what the chart sets), and passed down as the
settings of each piece. ``tuneship serve COMPONENT --print-config`` shows what a
component would run with and where each value came from.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

from tuneship.cli.kube_env import kube_settings
from tuneship.common.auth import AuthSettings, check_exposure
from tuneship.common.errors import EXIT_FAILED, EXIT_OK, InvalidInput, exit_code_of
from tuneship.common.guard import stage_security
from tuneship.common.logs import configure_logging
from tuneship.common.settings import SERVICES, LoadedEnv, Settings, TuneshipEnv, load_env
from tuneship.common.settings.report import config_lines
from tuneship.common.stages import PIPELINE, STAGES
from tuneship.common.stagework import StageContext
from tuneship.common.store import StoreSettings, open_store
from tuneship.common.toolchain import find_toolchain
from tuneship.common.wire import StageServicer, start_server
from tuneship.controller.app import ControllerSettings, start_controller
from tuneship.controller.inputs import UploadSettings, input_uploader
from tuneship.controller.scheduler import RetryPolicy


def controller_settings(
    loaded: LoadedEnv, env: Mapping[str, str], host: str, port: int
) -> ControllerSettings:
    """The controller's settings from the environment's (``env``: how to reach the
    Kubernetes API, ``HOME`` and ``PATH``)."""
    values = loaded.values
    settings = Settings.from_loaded(values, env)
    kinds = dict(values.providers)
    kube = kube_settings(values, env)
    workers = dict(values.workers)
    static = [s for s in STAGES if kinds.get(s, "static") == "static"]
    missing = [s for s in static if s not in workers]
    if missing:
        raise InvalidInput(
            f"no address for {', '.join(missing)}", where="TUNESHIP_WORKERS",
            hint=",".join(f"{s.name}={s.component}:50051" for s in PIPELINE if s.name in missing),
        )  # fmt: skip
    # Static stages default to one attempt at a time; the others to their capacity.
    limits = {**dict.fromkeys(static, 1), **values.limits}
    if values.state_url is not None:
        state = values.state_url.get_secret_value()
    else:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        state = f"sqlite:///{settings.data_dir.resolve() / 'state.db'}"
    return ControllerSettings(
        state_url=state, workers=workers, limits=limits, providers=kinds, kube=kube,
        heartbeat_timeout_s=values.heartbeat_timeout_s,
        unreachable_timeout_s=values.unreachable_timeout_s,
        state_reconnect_s=values.state_reconnect_s,
        retry=RetryPolicy(
            max_attempts=values.retry_attempts, initial_backoff_s=values.retry_backoff_s
        ),
        host=host, port=port, metrics_port=values.metrics_port,
    )  # fmt: skip


def _check_component(component: str) -> None:
    if component not in SERVICES:
        raise InvalidInput(f"unknown component {component!r}", where="COMPONENT",
                           hint=f"one of {', '.join(SERVICES)}")  # fmt: skip


def print_config(component: str, env: Mapping[str, str]) -> list[str]:
    """The lines ``serve COMPONENT --print-config`` prints: each setting the component
    reads, its value (secrets masked) and where it came from. Starts nothing."""
    _check_component(component)
    return config_lines(load_env(env, warn=False), component)


def serve_component(
    component: str,
    host: str,
    port: int,
    env: Mapping[str, str],
    once: bool = False,
    insecure: bool = False,
) -> int:
    """Start ``component`` and block until SIGTERM/SIGINT; returns the exit code.

    ``once``: serve only the task named by ``TUNESHIP_TASK_ID`` (a Job pod) and return
    when its end has been streamed to the controller, or ``TUNESHIP_ONCE_GRACE_S``
    (default 600) after it ended if nobody came for it. The code is 0 when it
    succeeded, ``EXIT_INVALID_INPUT`` when no retry can help, 1 otherwise. A trainer
    pod of a node other than node 0 (``PET_NODE_RANK`` > 0) follows node 0 instead.

    Beyond loopback it refuses to start without a token to check (``FailedPrecondition``)
    unless ``insecure``.
    """
    _check_component(component)
    loaded = load_env(env, warn=False)
    values = loaded.values
    configure_logging(values.log_format, values.log_level or "info", loaded.secrets())
    loaded.warn_unknown()  # after the log format is set: a JSON log stays JSON
    task_id = values.task_id if once else ""
    if once and (component == "controller" or not task_id):
        raise InvalidInput(
            "--once serves one stage task: it needs a stage component and TUNESHIP_TASK_ID",
            where="--once", hint="the controller sets TUNESHIP_TASK_ID in each Job it creates",
        )  # fmt: skip
    auth = AuthSettings.from_loaded(values, insecure=insecure)
    check_exposure(component, host, auth)
    settings = Settings.from_loaded(values, env)
    store = open_store(StoreSettings.from_loaded(values))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with ExitStack() as stack:
        if component == "controller":
            controller = start_controller(
                dataclasses.replace(controller_settings(loaded, env, host, port), auth=auth),
                input_uploader(store, UploadSettings(max_bytes=int(values.max_upload_gib * 2**30))),
                store=store,
            )
            stack.callback(controller.stop)
            stop.wait()
            return EXIT_OK
        if once and component == "trainer" and values.node_rank > 0:
            return _follow(values, store, host, port, auth, stop, stack)
        # Imported only for a stage service: the stage packages pull in torch and
        # transformers, which the controller (and its image) never needs.
        from tuneship.cli.embedded import component_server

        work_root = values.work_dir
        backend = replicas = None
        if component == "serving":
            from tuneship.serving.replicas import start_replica_sync

            backend = _serving_backend(values, settings, stack)
            # Every current model is on this replica before its gRPC health says SERVING.
            replicas = start_replica_sync(
                StageContext(store, work_root), backend, values.serving_sync_s
            )
            stack.callback(replicas.stop)
        toolchain = find_toolchain(settings).require_all() if component == "converter" else None
        server, stage = component_server(
            component, store, work_root, toolchain=toolchain, backend=backend, host=host,
            port=port, capacity=values.capacity, replicas=replicas,
            security=stage_security(auth),
        )  # fmt: skip
        stack.callback(server.stop)
        if not once:
            stop.wait()
            return EXIT_OK
        stage.only_task = task_id
        return _serve_once(
            stage, task_id, stop, values.once_grace_s,
            keeps_progress=component == "trainer",
        )  # fmt: skip


def _follow(
    values: TuneshipEnv, store: Any, host: str, port: int, auth: AuthSettings,
    stop: threading.Event, stack: ExitStack,
) -> int:  # fmt: skip
    """A training pod of a node other than node 0 (``PET_NODE_RANK`` > 0): its share of
    the training in ``TUNESHIP_STAGE_JOB`` (docs/kubernetes.md, "More than one node").
    It serves gRPC health only, for the pod's probes; the controller dials node 0."""
    from tuneship.common.codec import job_from_text
    from tuneship.trainer.follower import run_follower

    if not values.stage_job:
        raise InvalidInput(
            f"node {values.node_rank} of a multi-node training needs its job",
            where="TUNESHIP_STAGE_JOB",
            hint="the controller sets it in every pod of the JobSet or TrainJob it creates",
        )  # fmt: skip
    job = job_from_text(values.stage_job, where="TUNESHIP_STAGE_JOB")
    if job.task_id != values.task_id:
        raise InvalidInput(
            f"TUNESHIP_STAGE_JOB is task {job.task_id}, this pod's is {values.task_id}",
            where="TUNESHIP_STAGE_JOB",
        )
    server = start_server([], [], host=host, port=port, security=stage_security(auth))
    stack.callback(server.stop)
    return run_follower(StageContext(store, values.work_dir), job, stop)


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


def _serving_backend(values: TuneshipEnv, settings: Settings, stack: ExitStack) -> Any:
    from tuneship.serving import LlamaServerBackend, OllamaBackend

    if values.serving_backend == "ollama":
        return stack.enter_context(OllamaBackend(values.ollama_host))
    work = values.work_dir / "serving"
    return stack.enter_context(LlamaServerBackend(find_toolchain(settings), work))
