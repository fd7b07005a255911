"""Stage work in domain terms: what a stage is asked to do and what it hands back.

The controller and the stage workers exchange these (as protobuf on the wire, see
``codec.py``); nothing here knows about gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Artifact:
    """A committed output: the manifest key, its sha256 and size."""

    key: str
    sha256: str = ""
    size: int = 0


@dataclass(frozen=True)
class StageJob:
    """A ``StageRequest`` in domain terms (the spec stays JSON until the stage parses it)."""

    task_id: str
    pipeline: str
    spec_json: str
    inputs: dict[str, Artifact]
    output_prefix: str
    attempt: int = 0
    attach_only: bool = False
    """Follow the task only if the worker already has it (``NotFound`` otherwise)."""
    after_seq: int = 0
    """Skip the task's events numbered up to this (they were recorded before)."""


@dataclass(frozen=True)
class StageOutcome:
    """What a stage hands back: committed outputs and a JSON-able summary."""

    outputs: dict[str, Artifact]
    summary: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
