"""The pipeline's stages, defined once: every part of tuneship wires stages from here.

The controller (order, limits, which inputs a stage receives), the worker clients
(which gRPC service and method to call), the stage servers (which service to expose),
the embedded mode and ``tuneship serve COMPONENT`` all read this table. A new stage is
a row here, its service in ``proto/tuneship/v1/workers.proto`` and its servicer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Stage:
    """One stage of a pipeline and the service that runs it."""

    name: str
    """Its name in specs, task ids, store keys and the controller's state."""
    component: str
    """The process that runs it: ``tuneship serve COMPONENT``."""
    service: str
    """Its gRPC service in package ``tuneship.v1`` (with a ``Cancel`` RPC beside ``method``)."""
    method: str
    """The service's streaming stage RPC, taking a ``StageRequest``."""
    inputs: Mapping[str, str]
    """What it reads, by input name: ``input:KIND`` is a pipeline input (uploaded from
    the spec), ``stage:NAME`` the committed output of an earlier stage. Optional inputs
    that a pipeline lacks are left out. The order is the order in which the inputs'
    manifests enter the stage's cache key, so reordering invalidates cached results."""

    @property
    def full_service(self) -> str:
        """The service's fully qualified name (health checks, reflection)."""
        return f"tuneship.v1.{self.service}"


def _stage(name: str, component: str, service: str, method: str, **inputs: str) -> Stage:
    return Stage(name, component, service, method, MappingProxyType(inputs))


PIPELINE: tuple[Stage, ...] = (
    _stage("train", "trainer", "TrainerService", "Train",
           base="input:base", train="input:train", eval="input:eval"),
    _stage("merge", "merger", "MergerService", "Merge",
           base="input:base", train_out="stage:train"),
    _stage("export", "converter", "ConverterService", "Export",
           model="stage:merge", train="input:train", eval="input:eval"),
    _stage("publish", "serving", "ServingService", "Publish",
           gguf="stage:export"),
)  # fmt: skip
"""Every stage, in the order a pipeline runs them."""

STAGES: tuple[str, ...] = tuple(s.name for s in PIPELINE)
"""The stage names, in the order they run."""

COMPONENTS: tuple[str, ...] = tuple(s.component for s in PIPELINE)
"""The stage services' component names, in stage order."""

_BY_NAME = {s.name: s for s in PIPELINE}
_BY_COMPONENT = {s.component: s for s in PIPELINE}


def stage_named(name: str) -> Stage:
    """The stage called ``name``; ``KeyError`` if there is none."""
    return _BY_NAME[name]


def stage_of_component(component: str) -> Stage:
    """The stage that ``component`` runs; ``KeyError`` if it runs none."""
    return _BY_COMPONENT[component]
