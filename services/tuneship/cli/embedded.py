"""All of tuneship in one process: four stage services and the controller on loopback.

The same servicers, gRPC stubs and store protocol as in a cluster; only the addresses
(loopback ports), the store (a local directory) and the state (SQLite) differ. Also the
entry point of the per-component servers (`tuneship serve COMPONENT`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneship.common.errors import FailedPrecondition
from tuneship.common.settings import Settings
from tuneship.common.stages import COMPONENTS, stage_of_component
from tuneship.common.stagework import StageContext
from tuneship.common.store import ArtifactStore, LocalStore
from tuneship.common.toolchain import Toolchain, find_toolchain
from tuneship.common.wire import Server, ServerSecurity, StageService, StageServicer
from tuneship.controller.app import Controller, ControllerSettings, start_controller
from tuneship.controller.inputs import input_uploader
from tuneship.converter.servicer import converter_service
from tuneship.merger.servicer import merger_service
from tuneship.serving.replicas import ReplicaSync
from tuneship.serving.servicer import serving_service
from tuneship.trainer.servicer import trainer_service


@dataclass(frozen=True)
class ComponentNeeds:
    """Everything a stage service may be built from; each takes what it uses."""

    ctx: StageContext
    capacity: int
    toolchain: Toolchain | None = None
    """The llama.cpp build (the converter)."""
    backend: Any = None
    """The serving backend (the serving service)."""
    replicas: ReplicaSync | None = None
    """The serving replica's sync with the store's served-model records (a cluster)."""

    def require_toolchain(self) -> Toolchain:
        assert self.toolchain is not None, "the converter needs a toolchain"
        return self.toolchain


"""(add-to-server function, gRPC servicer, full service name, stage servicer)."""

SERVICES: dict[str, Callable[[ComponentNeeds], StageService]] = {
    "trainer": lambda needs: trainer_service(needs.ctx, needs.capacity),
    "merger": lambda needs: merger_service(needs.ctx, needs.capacity),
    "converter": lambda needs: converter_service(
        needs.ctx, needs.require_toolchain(), needs.capacity
    ),
    "serving": lambda needs: serving_service(
        needs.ctx, needs.backend, needs.capacity, needs.replicas
    ),
}
"""How to build each component's service (keys: ``common.stages.COMPONENTS``)."""


def component_server(
    component: str,
    store: ArtifactStore,
    work_root: Path,
    *,
    toolchain: Toolchain | None = None,
    backend: Any = None,
    host: str = "127.0.0.1",
    port: int = 0,
    capacity: int = 1,
    replicas: ReplicaSync | None = None,
    security: ServerSecurity | None = None,
) -> tuple[Server, StageServicer]:
    """Start one stage service; returns the server and its stage servicer."""
    needs = ComponentNeeds(StageContext(store, work_root), capacity, toolchain, backend, replicas)
    service = SERVICES[component](needs)
    return service.start(host=host, port=port, security=security), service.stage


@dataclass
class Embedded:
    """A running all-in-one tuneship; ``close`` stops everything it started."""

    data_dir: Path
    store: LocalStore
    controller: Controller
    servers: dict[str, Server]
    stages: dict[str, StageServicer]
    backend_kind: str
    _stack: ExitStack = field(default_factory=ExitStack)

    @property
    def address(self) -> str:
        return self.controller.address

    def close(self) -> None:
        self.controller.stop()
        for server in self.servers.values():
            server.stop(1.0)
        self._stack.close()


_HELD: set[Path] = set()
"""Data directories this process holds (``data_dir_lock``)."""


@contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir`` for this process: one data directory, one controller. A second
    ``tuneship run`` on it gets ``FailedPrecondition`` naming the holder's pid instead
    of sharing (and corrupting) its database and store. The lock is the kernel's
    (``flock``), so a killed holder never leaves it stale. Re-entrant in one process."""
    if data_dir.resolve() in _HELD:
        yield
        return
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        handle = (data_dir / "lock").open("a+")
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot use {data_dir} as the data directory: {exc.strerror or exc}",
            where="--data-dir",
            hint="give a directory this user can create and write (--data-dir or "
            "TUNESHIP_DATA_DIR), on a filesystem with free space",
        ) from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise FailedPrecondition(
            f"{data_dir} is in use by tuneship (pid {holder})",
            where="--data-dir",
            hint="wait for that run to end, or give this one its own --data-dir",
        ) from exc
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        _HELD.add(data_dir.resolve())
        yield
    finally:
        _HELD.discard(data_dir.resolve())
        handle.close()


def start_embedded(settings: Settings, backend: Any, stack: ExitStack) -> Embedded:
    """Start the four services and the controller under ``settings.data_dir``.

    ``backend`` is the serving backend (Ollama when one answers, else llama-server);
    ``stack`` owns its lifetime.
    """
    data_dir = settings.data_dir.resolve()
    stack.enter_context(data_dir_lock(data_dir))
    store = LocalStore(data_dir / "store")
    toolchain = find_toolchain(settings).require_all()
    work = data_dir / "work"
    shutil.rmtree(work / ".tmp", ignore_errors=True)
    servers: dict[str, Server] = {}
    stages: dict[str, StageServicer] = {}
    for component in COMPONENTS:
        server, stage = component_server(
            component, store, work, toolchain=toolchain, backend=backend
        )
        servers[component], stages[stage_of_component(component).name] = server, stage
    controller = start_controller(
        ControllerSettings(
            state_url=f"sqlite:///{data_dir / 'state.db'}",
            workers={stage_of_component(c).name: s.address for c, s in servers.items()},
            heartbeat_timeout_s=120.0,
        ),
        input_uploader(store),
        store=store,
    )
    return Embedded(
        data_dir, store, controller, servers, stages, getattr(backend, "kind", "?"), stack
    )
