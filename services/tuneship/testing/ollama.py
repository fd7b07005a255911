"""``OllamaTestServer``: an HTTP server on loopback that follows Ollama's documented API.

It checks requests the way Ollama does: blob uploads are hashed and refused (400) when
the digest does not match the bytes, ``/api/create`` needs existing GGUF blobs and a
TEMPLATE that parses as a Go template (400 otherwise), unknown models are 404, chat
streams JSON lines ending with ``done: true`` and a ``done_reason``. ``version`` sets
what ``/api/version`` says, so that an old server can be simulated (before 0.30 a model
created without TEMPLATE gets ``{{ .Prompt }}``, as old servers did).

Chat answers are canned (``reply``), not generated: this server tests the HTTP
contract, and the model's behaviour is tested on a real llama-server by the
llama-server backend tests. The canned reply still honours ``stop`` strings (model
parameters and request options) and ``num_predict`` (one word = one token).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tuneship.testing.gotemplate_syntax import check_go_template

_DIGEST = re.compile(r"^sha256[:-][0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?$")
_OPTIONS: dict[str, tuple[type, ...]] = {
    "num_ctx": (int,), "num_predict": (int,), "num_keep": (int,), "seed": (int,),
    "top_k": (int,), "repeat_last_n": (int,), "temperature": (int, float),
    "top_p": (int, float), "min_p": (int, float), "repeat_penalty": (int, float),
    "stop": (list, str),
}  # fmt: skip


@dataclass
class _Model:
    digest: str
    size: int
    template: str
    system: str
    parameters: dict[str, Any]
    messages: list[dict[str, str]]
    modified: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


def _normal(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in text.split("-")[0].split(".")[:3])


class OllamaTestServer:
    """Start with ``with OllamaTestServer() as server:``; ``server.url`` is its base URL.

    ``fail_next(n, status)`` makes the next ``n`` requests answer ``status`` (for retry
    tests); ``requests`` logs ``(method, path)`` of every request; ``uploads`` counts
    blob bodies received.
    """

    def __init__(self, *, version: str = "0.30.0", reply: str = "Ahoy! I am a test model.") -> None:
        self.version = version
        self.reply = reply
        self.blobs: dict[str, bytes] = {}
        self.models: dict[str, _Model] = {}
        self.requests: list[tuple[str, str]] = []
        self.chats: list[dict[str, Any]] = []
        self.uploads = 0
        self._failures: list[tuple[int, str | None]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OllamaTestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> OllamaTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, count: int, status: int = 503, method: str | None = None) -> None:
        """Answer the next ``count`` requests (of ``method`` only, if given) with ``status``."""
        with self._lock:
            self._failures.extend([(status, method)] * count)

    def take_failure(self, method: str) -> int | None:
        with self._lock:
            for index, (status, only) in enumerate(self._failures):
                if only in (None, method):
                    del self._failures[index]
                    return status
            return None

    def renders_jinja(self) -> bool:
        return _version_tuple(self.version) >= (0, 30, 0)

    # -- endpoints: each returns (status, JSON body) --------------------------------------

    def put_blob(self, digest: str, body: bytes) -> tuple[int, Any]:
        if not _DIGEST.match(digest):
            return 400, {"error": "invalid digest format"}
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if actual != digest.replace("-", ":", 1):
            return 400, {"error": "digest mismatch"}
        with self._lock:
            self.blobs[actual] = body
            self.uploads += 1
        return 201, None

    def create(self, body: dict[str, Any]) -> tuple[int, Any]:
        name = body.get("model") or body.get("name") or ""
        if not _NAME.match(name):
            return 400, {"error": f"invalid model name {name!r}"}
        problem = self._create_problem(body)
        if problem:
            return 400, {"error": problem}
        (digest,) = body["files"].values()
        blob = self.blobs[digest]
        template = body.get("template") or ("" if self.renders_jinja() else "{{ .Prompt }}")
        with self._lock:
            self.models[_normal(name)] = _Model(
                digest, len(blob), template, body.get("system") or "",
                dict(body.get("parameters") or {}), list(body.get("messages") or []),
            )  # fmt: skip
        return 200, {"status": "success"}

    def _create_problem(self, body: dict[str, Any]) -> str | None:
        files = body.get("files")
        if not isinstance(files, dict) or not files:
            return "neither 'from' or 'files' was specified"
        if len(files) != 1:
            return "only one GGUF file per model is supported here"
        for filename, digest in files.items():
            if digest not in self.blobs:
                return f"blob {digest} for {filename} not found; upload it to /api/blobs first"
            if self.blobs[digest][:4] != b"GGUF":
                return f"{filename} is not a GGUF file"
        if body.get("template"):
            try:
                check_go_template(str(body["template"]))
            except ValueError as exc:
                return f"template: {exc}"
        for key, value in (body.get("parameters") or {}).items():
            if key not in _OPTIONS:
                return f"unknown parameter {key!r}"
            if not isinstance(value, _OPTIONS[key]) or isinstance(value, bool):
                return f"invalid type for parameter {key!r}: {value!r}"
        for message in body.get("messages") or []:
            if message.get("role") not in ("system", "user", "assistant", "tool"):
                return f"invalid message role {message.get('role')!r}"
        return None

    def show(self, body: dict[str, Any]) -> tuple[int, Any]:
        model = self.models.get(_normal(str(body.get("model") or body.get("name") or "")))
        if model is None:
            return 404, {"error": f"model '{body.get('model')}' not found"}
        lines = []
        for key, value in model.parameters.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"{key:<30} {json.dumps(item) if isinstance(item, str) else item}")
        return 200, {
            "modelfile": f"FROM {model.digest}\n", "parameters": "\n".join(lines),
            "template": model.template, "system": model.system,
            "details": {"format": "gguf"}, "modified_at": model.modified,
        }  # fmt: skip

    def tags(self) -> tuple[int, Any]:
        models = [
            {"name": n, "model": n, "modified_at": m.modified, "size": m.size, "digest": m.digest}
            for n, m in sorted(self.models.items())
        ]
        return 200, {"models": models}

    def delete(self, body: dict[str, Any]) -> tuple[int, Any]:
        name = _normal(str(body.get("model") or body.get("name") or ""))
        with self._lock:
            if self.models.pop(name, None) is None:
                return 404, {"error": f"model '{name}' not found"}
        return 200, None

    def copy(self, body: dict[str, Any]) -> tuple[int, Any]:
        source, destination = body.get("source", ""), body.get("destination", "")
        if not _NAME.match(str(destination)):
            return 400, {"error": f"invalid destination name {destination!r}"}
        with self._lock:
            model = self.models.get(_normal(str(source)))
            if model is None:
                return 404, {"error": f"model '{source}' not found"}
            self.models[_normal(destination)] = model
        return 200, None

    def chat_chunks(self, body: dict[str, Any]) -> tuple[int, Any]:
        model = self.models.get(_normal(str(body.get("model", ""))))
        if model is None:
            return 404, {"error": f"model '{body.get('model')}' not found, try pulling it first"}
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant", "tool")
            for m in messages
        ):
            return 400, {"error": "messages must be a list of {role, content}"}
        self.chats.append(body)
        options = {**model.parameters, **(body.get("options") or {})}
        return 200, self._answer(str(body["model"]), options)

    def _answer(self, name: str, options: dict[str, Any]) -> list[dict[str, Any]]:
        text, reason = self.reply, "stop"
        stops = options.get("stop") or []
        for stop in [stops] if isinstance(stops, str) else stops:
            if stop and stop in text:
                text = text[: text.index(stop)]
        words = re.findall(r"\S+\s*", text)
        limit = int(options.get("num_predict") or -1)
        if 0 <= limit < len(words):
            words, reason = words[:limit], "length"
        now = datetime.now(UTC).isoformat()
        chunks: list[dict[str, Any]] = [
            {"model": name, "created_at": now, "message": {"role": "assistant", "content": w},
             "done": False}
            for w in words
        ]  # fmt: skip
        chunks.append({
            "model": name, "created_at": now, "message": {"role": "assistant", "content": ""},
            "done": True, "done_reason": reason, "eval_count": len(words),
        })  # fmt: skip
        return chunks


def _handler_for(server: OllamaTestServer) -> type[BaseHTTPRequestHandler]:
    from tuneship.testing.ollama_http import make_handler

    return make_handler(server)
