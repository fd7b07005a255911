"""All of tuneship in one process: four stage services and the controller on loopback.

The same servicers, gRPC stubs and store protocol as in a cluster; only the addresses
(loopback ports), the store (a local directory) and the state (SQLite) differ. Also the
entry point of the per-component servers (`tuneship serve COMPONENT`).
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneship.common.settings import Settings
from tuneship.common.stagework import StageContext
from tuneship.common.store import ArtifactStore, LocalStore
from tuneship.common.toolchain import Toolchain, find_toolchain
from tuneship.common.wire import Server, StageServicer, start_server
from tuneship.controller.app import Controller, ControllerSettings, start_controller
from tuneship.controller.inputs import input_uploader
from tuneship.controller.machine import STAGES
from tuneship.converter.servicer import converter_service
from tuneship.merger.servicer import merger_service
from tuneship.serving.servicer import serving_service
from tuneship.trainer.servicer import trainer_service

COMPONENTS = ("trainer", "merger", "converter", "serving")
STAGE_OF = dict(zip(COMPONENTS, STAGES, strict=True))


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
) -> tuple[Server, StageServicer]:
    """Start one stage service; returns the server and its stage servicer."""
    ctx = StageContext(store, work_root)
    if component == "trainer":
        add, servicer, name, stage = trainer_service(ctx, capacity)
    elif component == "merger":
        add, servicer, name, stage = merger_service(ctx, capacity)
    elif component == "converter":
        assert toolchain is not None
        add, servicer, name, stage = converter_service(ctx, toolchain, capacity)
    else:
        add, servicer, name, stage = serving_service(ctx, backend, capacity)
    return start_server([(add, servicer)], [name], host=host, port=port), stage


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


def start_embedded(settings: Settings, backend: Any, stack: ExitStack) -> Embedded:
    """Start the four services and the controller under ``settings.data_dir``.

    ``backend`` is the serving backend (Ollama when one answers, else llama-server);
    ``stack`` owns its lifetime.
    """
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
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
        servers[component], stages[STAGE_OF[component]] = server, stage
    controller = start_controller(
        ControllerSettings(
            state_url=f"sqlite:///{data_dir / 'state.db'}",
            workers={STAGE_OF[c]: s.address for c, s in servers.items()},
            heartbeat_timeout_s=120.0,
        ),
        input_uploader(store),
    )
    return Embedded(
        data_dir, store, controller, servers, stages, getattr(backend, "kind", "?"), stack
    )
