"""Chatting with a published model while keeping the conversation's history."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tuneship.serving.backend import Message, ServingBackend


@dataclass
class ChatSession:
    """A conversation with ``model`` on ``backend``; each ``ask`` sees all earlier turns.

    The user's message and the answer join the history only once the answer is complete,
    so an interrupted or failed answer leaves the history as it was.
    """

    backend: ServingBackend
    model: str
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    history: list[Message] = field(default_factory=list)
    last_done_reason: str | None = None

    def messages_for(self, text: str) -> list[Message]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.history, {"role": "user", "content": text}]

    def ask(self, text: str) -> Iterator[str]:
        """Stream the answer to ``text`` piece by piece."""
        stream = self.backend.chat(self.model, self.messages_for(text), **self.options)
        pieces = []
        for piece in stream:
            pieces.append(piece)
            yield piece
        self.last_done_reason = stream.done_reason
        self.history += [
            {"role": "user", "content": text},
            {"role": "assistant", "content": "".join(pieces)},
        ]

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history.clear()
