"""``OllamaBackend``: publishing and chatting through Ollama's HTTP API.

Blobs are uploaded by digest (skipped when the server has them), models are created
from ``files`` with ``stream: false`` so that failures come back as status codes, and
chat answers stream as JSON lines. Transient failures (connection refused, timeouts,
502/503/504) are retried; the rest map to tuneship's error types.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tuneship.common.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    TuneshipError,
    Unavailable,
)
from tuneship.common.hashing import sha256_file
from tuneship.serving.backend import (
    BackendHealth,
    ChatStream,
    Messages,
    PublishedModel,
    full_name,
    parse_version,
)

MIN_VERSION = (0, 5, 5)
"""Oldest Ollama whose /api/create takes ``files`` (GGUF blobs by digest)."""
JINJA_VERSION = (0, 30, 0)
"""First Ollama that renders the GGUF's Jinja template when no TEMPLATE is given."""
_TRANSIENT = {502, 503, 504}
_OPTION_KEYS = {"num_predict", "temperature", "top_p", "top_k", "seed", "stop", "num_ctx"}


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file: the digest Ollama names blobs by."""
    return f"sha256:{sha256_file(path)}"


class _FileBody:
    """A file streamed in 1 MiB blocks, re-read from the start on each retry."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[bytes]:
        with self.path.open("rb") as handle:
            yield from iter(lambda: handle.read(1 << 20), b"")


class OllamaBackend:
    """An Ollama server at ``base_url`` (e.g. ``http://127.0.0.1:11434``)."""

    kind = "ollama"

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        keep_alive: str = "5m",
        upload_timeout_s: float = 600.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.keep_alive = keep_alive
        self.upload_timeout_s = upload_timeout_s
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OllamaBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request with retries on transient failures; HTTP errors mapped."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:  # refused, reset, timed out
                last = exc
                continue
            if response.status_code in _TRANSIENT:
                last = _status_error(response, path)
                continue
            return response
        raise Unavailable(
            f"Ollama at {self.base_url} did not answer {method} {path} "
            f"after {self.retries + 1} tries: {last}",
            hint="is `ollama serve` running? check the URL (--ollama-url / OLLAMA_HOST)",
        )

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _status_error(response, path)
        return response.json() if response.content else {}

    # -- the port ----------------------------------------------------------------------

    def health(self) -> BackendHealth:
        """``GET /`` and ``/api/version``; ``ok`` is False when down or too old."""
        try:
            root = self._request("GET", "/")
            version = str(self._json("GET", "/api/version").get("version", ""))
        except TuneshipError as exc:
            return BackendHealth(False, self.kind, detail=exc.message)
        if root.status_code != 200:
            return BackendHealth(False, self.kind, detail=f"GET / answered {root.status_code}")
        parsed = parse_version(version)
        if parsed < MIN_VERSION:
            need = ".".join(map(str, MIN_VERSION))
            return BackendHealth(
                False, self.kind, version,
                detail=f"Ollama {version} is older than {need}, which tuneship needs",
            )  # fmt: skip
        return BackendHealth(True, self.kind, version, renders_jinja=parsed >= JINJA_VERSION)

    def require_healthy(self) -> BackendHealth:
        """``health()``, raising ``FailedPrecondition``/``Unavailable`` when not ok."""
        health = self.health()
        if not health.ok:
            error = FailedPrecondition if health.version else Unavailable
            raise error(health.detail, where=self.base_url, hint="upgrade or start Ollama")
        return health

    def upload(self, gguf: Path) -> str:
        """Make sure the server holds ``gguf`` as a blob; return its digest."""
        digest = file_digest(gguf)
        path = f"/api/blobs/{digest}"
        if self._request("HEAD", path).status_code == 200:
            return digest
        body = _FileBody(gguf)
        response = self._request("POST", path, content=body, timeout=self.upload_timeout_s)
        if response.status_code == 400:
            raise FailedPrecondition(
                f"Ollama rejected the upload of {gguf.name}: {_error_text(response)}",
                where=str(gguf),
                hint="the file changed while it was uploaded, or the transfer was corrupted",
            )
        if response.status_code not in (200, 201):
            raise _status_error(response, path)
        return digest

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
    ) -> PublishedModel:
        """Upload ``gguf`` (unless present) and create ``name:tag`` from it."""
        digest = self.upload(gguf)
        model = full_name(name, tag)
        body: dict[str, Any] = {"model": model, "files": {gguf.name: digest}, "stream": False}
        optional = {"template": template, "system": system, "messages": messages}
        body.update({k: v for k, v in optional.items() if v})
        if parameters:
            body["parameters"] = parameters
        answer = self._json("POST", "/api/create", json=body)
        if answer.get("status") != "success":
            raise FailedPrecondition(f"Ollama did not create {model}: {answer}")
        return self.show(model)

    def copy(self, source: str, destination: str) -> None:
        self._json("POST", "/api/copy", json={"source": source, "destination": destination})

    def list(self) -> list[PublishedModel]:
        models = self._json("GET", "/api/tags").get("models", [])
        return [
            PublishedModel(m["name"], m.get("digest", ""), int(m.get("size", 0))) for m in models
        ]

    def show(self, name: str) -> PublishedModel:
        answer = self._json("POST", "/api/show", json={"model": full_name(name)})
        return PublishedModel(
            name=full_name(name),
            template=answer.get("template"),
            system=answer.get("system"),
            parameters=_parse_parameters(answer.get("parameters", "")),
        )

    def delete(self, name: str) -> None:
        self._json("DELETE", "/api/delete", json={"model": full_name(name)})

    def chat(self, name: str, messages: Messages, **options: Any) -> ChatStream:
        """Stream an answer; ``options`` are Ollama options (num_predict, stop, ...)."""
        body = {
            "model": full_name(name),
            "messages": messages,
            "stream": True,
            "keep_alive": options.pop("keep_alive", self.keep_alive),
            "options": {k: v for k, v in options.items() if k in _OPTION_KEYS},
        }
        return ChatStream(self._stream_chat(body))

    def _stream_chat(self, body: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            with self._client.stream("POST", "/api/chat", json=body, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _status_error(response, "/api/chat")
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    chunk = json.loads(line)
                    if "error" in chunk:
                        raise FailedPrecondition(f"Ollama chat failed: {chunk['error']}")
                    text = chunk.get("message", {}).get("content", "")
                    final = {}
                    if chunk.get("done"):
                        final = {
                            "done_reason": chunk.get("done_reason", "stop"),
                            "tokens": chunk.get("eval_count"),
                        }
                    yield text, final
        except httpx.TransportError as exc:
            raise Unavailable(f"Ollama at {self.base_url} dropped the chat: {exc}") from exc


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except (json.JSONDecodeError, AttributeError):
        return response.text


def _status_error(response: httpx.Response, path: str) -> TuneshipError:
    text = f"Ollama {path} answered {response.status_code}: {_error_text(response)}"
    code = response.status_code
    if code == 404:
        return NotFound(text, hint="`tuneship publish` the model first; list with /api/tags")
    if code == 400:
        return InvalidInput(text)
    if code in _TRANSIENT:
        return Unavailable(text)
    return FailedPrecondition(text)


def _parse_parameters(text: str) -> dict[str, Any]:
    """``/api/show``'s ``parameters`` text (``key value`` lines) as a dict; repeated keys
    (``stop``) become lists."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        key, _, raw = line.strip().partition(" ")
        if not key:
            continue
        try:
            value: Any = json.loads(raw.strip())
        except json.JSONDecodeError:
            value = raw.strip()
        if key == "stop":
            out.setdefault("stop", []).append(value)
        else:
            out[key] = value
    return out
