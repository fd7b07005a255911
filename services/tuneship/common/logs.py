"""Log lines for operators: text or one JSON object per line, with the task they are about.

``configure_logging`` is called once by an entry point (``tuneship serve``, ``tuneship
run``). Code that works on behalf of a task wraps that work in ``task_context(...)``
(a contextvar, so every line logged inside it, by any module, carries the ids), or
passes the ids with ``extra=``. A JSON line has ``time``, ``level``, ``logger``,
``message`` and, when known, ``pipeline_id``, ``stage``, ``attempt``, ``task_id``
(and ``error`` with the traceback of a logged exception).

Secret values the entry point knows (store keys, tokens) are replaced by ``***`` in
every line, whoever logged them: a library that prints a URL with its password, or an
error that quotes a header, does not leak them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

TASK_FIELDS = ("pipeline_id", "stage", "attempt", "task_id")
"""What a line says about the task it concerns, in this order."""

_task: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("tuneship_task")

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip


@contextmanager
def task_context(**ids: Any) -> Iterator[None]:
    """Lines logged inside (in this thread or context) carry ``ids`` (None: left out)."""
    known = {k: v for k, v in ids.items() if v not in (None, "")}
    token = _task.set({**_task.get({}), **known})
    try:
        yield
    finally:
        _task.reset(token)


def in_task_context(fn: Callable[..., Any], **ids: Any) -> Callable[..., Any]:
    """``fn`` run inside ``task_context(**ids)`` (a thread's target: a new thread
    starts with an empty context)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        with task_context(**ids):
            return fn(*args, **kwargs)

    return run


def task_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The task ids of ``record``: the context's, overridden by its ``extra=``."""
    found = dict(_task.get({}))
    for name in TASK_FIELDS:
        value = getattr(record, name, None)
        if value not in (None, ""):
            found[name] = value
    return {name: found[name] for name in TASK_FIELDS if name in found}


class _Redacting(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a secret containing another is masked whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class JsonFormatter(_Redacting):
    """One JSON object per line (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.redact(record.getMessage()),
            **task_fields(record),
        }
        if record.exc_info:
            line["error"] = self.redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(_Redacting):
    """``time level logger [pipeline stage attempt task] message`` for people."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        ids = " ".join(f"{k}={v}" for k, v in task_fields(record).items())
        text = f"{when}Z {record.levelname:<7} {record.name}: "
        text += (f"[{ids}] " if ids else "") + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return self.redact(text)


def configure_logging(
    fmt: str = "text",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send every log line (root logger) to ``stream`` (stderr) as ``fmt`` (text, json)
    from ``level`` up, masking ``secrets``; replaces the handler a previous call set.
    Returns the handler (tests read what it wrote)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "tuneship", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.tuneship = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    # Chatty libraries stay at warning unless debugging.
    for name in ("urllib3", "botocore", "httpx", "httpcore", "kubernetes"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    return handler
