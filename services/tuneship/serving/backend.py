"""The serving port: what a place that serves GGUF chat models must offer.

Two adapters implement it: ``OllamaBackend`` (Ollama's HTTP API) and
``LlamaServerBackend`` (managed llama-server processes, the embedded default).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Message = dict[str, str]
Messages = list[Message]


@dataclass(frozen=True)
class PublishedModel:
    """A model as the backend knows it (``name`` is ``model:tag``)."""

    name: str
    digest: str = ""
    size: int = 0
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendHealth:
    """Whether the backend answers, its version and what it can do."""

    ok: bool
    kind: str
    version: str = ""
    renders_jinja: bool = False
    """True when the server renders the GGUF's own Jinja template (no TEMPLATE needed)."""
    detail: str = ""


class ChatStream(Iterator[str]):
    """The text pieces of one streamed answer. After the last piece, ``done_reason`` is
    ``"stop"`` (the model ended its turn or hit a stop string) or ``"length"`` (token
    limit), ``tokens`` the number of generated tokens when the server reports it, and
    ``first_piece_s`` the seconds from the request to the first piece."""

    def __init__(self, pieces: Iterable[tuple[str, dict[str, Any]]]) -> None:
        self._pieces = iter(pieces)
        self._start = time.monotonic()
        self.done_reason: str | None = None
        self.tokens: int | None = None
        self.first_piece_s: float | None = None

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> str:
        while True:
            text, final = next(self._pieces)
            if final:
                self.done_reason = final.get("done_reason", self.done_reason)
                self.tokens = final.get("tokens", self.tokens)
            if text:
                if self.first_piece_s is None:
                    self.first_piece_s = time.monotonic() - self._start
                return text

    def text(self) -> str:
        """Consume the rest of the stream and return it joined."""
        return "".join(self)


class ServingBackend(Protocol):
    """Publish GGUFs under ``name:tag``, list, show, delete, copy and chat with them."""

    kind: str

    def publish(
        self,
        gguf: Path,
        name: str,
        tag: str,
        *,
        template: str | None,
        system: str | None,
        parameters: dict[str, Any],
        messages: Messages | None = None,
    ) -> PublishedModel: ...

    def copy(self, source: str, destination: str) -> None: ...

    def list(self) -> list[PublishedModel]: ...

    def show(self, name: str) -> PublishedModel: ...

    def delete(self, name: str) -> None: ...

    def chat(self, name: str, messages: Messages, **options: Any) -> ChatStream: ...

    def health(self) -> BackendHealth: ...


def full_name(name: str, tag: str | None = None) -> str:
    """``name:tag``; a name without a tag means ``:latest`` (as Ollama reads it)."""
    if tag:
        return f"{name.split(':')[0]}:{tag}"
    return name if ":" in name else f"{name}:latest"


def parse_version(text: str) -> tuple[int, ...]:
    """``"0.30.1-rc2"`` → ``(0, 30, 1)``; unparsable parts count as 0."""
    parts = []
    for piece in text.strip().lstrip("v").split("-")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))
