"""``LlamaServerBackend``: the embedded serving backend, for machines without Ollama.

Published models live under ``work_dir``::

    blobs/sha256-<hex>.gguf        the GGUF, content-addressed (hard link or copy)
    models/<name>/<tag>.json       manifest: digest, system, parameters (written last)
    logs/<hex12>.log               one llama-server log per blob

One llama-server process per blob (``name:version`` and ``name:latest`` share it),
started on publish or on first chat, on a free loopback port, waited for until
healthy, restarted when it has died, stopped by ``close()``. llama-server renders the
GGUF's own Jinja template, so a Go TEMPLATE cannot apply here and is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

from tuneship.common.atomic import atomic_write_text, staged_file
from tuneship.common.errors import InvalidInput, NotFound
from tuneship.common.events import EventSink, Log, NullSink
from tuneship.common.llama_server import LlamaServer
from tuneship.common.toolchain import Toolchain, binary_version
from tuneship.serving.backend import (
    BackendHealth,
    ChatStream,
    Messages,
    PublishedModel,
    full_name,
)
from tuneship.serving.ollama import file_digest

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
# Ollama option names → llama-server's OpenAI-compatible fields.
_OPTIONS = {
    "num_predict": "max_tokens", "stop": "stop", "temperature": "temperature",
    "top_p": "top_p", "top_k": "top_k", "seed": "seed", "repeat_penalty": "repeat_penalty",
    "min_p": "min_p",
}  # fmt: skip


class LlamaServerBackend:
    """Serves published GGUFs with managed llama-server processes (close() stops them)."""

    kind = "llama-server"

    def __init__(
        self,
        toolchain: Toolchain,
        work_dir: Path,
        *,
        threads: int = 2,
        default_context: int = 4096,
        startup_timeout_s: float = 120.0,
        events: EventSink | None = None,
    ) -> None:
        self.binary = toolchain.binary("llama-server")
        self.work_dir = work_dir
        self.threads = threads
        self.default_context = default_context
        self.startup_timeout_s = startup_timeout_s
        self.events = events or NullSink()
        self.restarts = 0
        self._servers: dict[str, LlamaServer] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> LlamaServerBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every llama-server this backend started."""
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.stop()

    def _manifest_path(self, name: str) -> Path:
        model, tag = full_name(name).split(":")
        return self.work_dir / "models" / model / f"{tag}.json"

    def _read(self, name: str) -> dict[str, Any]:
        path = self._manifest_path(name)
        if not path.is_file():
            raise NotFound(
                f"model {full_name(name)!r} is not published here",
                where=str(self.work_dir),
                hint="`tuneship publish GGUF --name NAME --backend llama-server` first",
            )
        return dict(json.loads(path.read_text(encoding="utf-8")))

    def _store_blob(self, gguf: Path) -> tuple[str, Path]:
        digest = file_digest(gguf)
        blob = self.work_dir / "blobs" / (digest.replace(":", "-") + ".gguf")
        if not blob.is_file():
            with staged_file(blob) as tmp:
                try:
                    os.link(gguf, tmp)
                except OSError:  # another filesystem: copy instead
                    shutil.copyfile(gguf, tmp)
        return digest, blob

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
        """Register ``gguf`` as ``name:tag`` and start (or reuse) its llama-server."""
        model = full_name(name, tag)
        if not _NAME.match(model):
            raise InvalidInput(
                f"invalid model name {model!r}",
                where="serve.name",
                hint="lowercase letters, digits, '.', '_' and '-'; tags up to 128 characters",
            )
        if template:
            raise InvalidInput(
                "llama-server renders the GGUF's own Jinja template; a Go TEMPLATE applies "
                "to Ollama only",
                where="serve.template_mode",
                hint="use template_mode: jinja (or auto) with the llama-server backend",
            )
        if messages:
            raise InvalidInput("seed messages are supported by the Ollama backend only")
        digest, blob = self._store_blob(gguf)
        manifest = {
            "name": model, "digest": digest, "gguf": str(blob), "size": blob.stat().st_size,
            "system": system, "parameters": parameters,
        }  # fmt: skip
        self._server_for(manifest)
        atomic_write_text(self._manifest_path(model), json.dumps(manifest, indent=2))
        return self._published(manifest)

    def copy(self, source: str, destination: str) -> None:
        manifest = {**self._read(source), "name": full_name(destination)}
        atomic_write_text(self._manifest_path(destination), json.dumps(manifest, indent=2))

    def list(self) -> list[PublishedModel]:
        root = self.work_dir / "models"
        paths = sorted(root.glob("*/*.json")) if root.is_dir() else []
        return [self._published(json.loads(p.read_text(encoding="utf-8"))) for p in paths]

    def show(self, name: str) -> PublishedModel:
        return self._published(self._read(name))

    def delete(self, name: str) -> None:
        """Remove ``name``; its server stops when no other tag uses the same blob."""
        manifest = self._read(name)
        self._manifest_path(name).unlink()
        if not any(m.digest == manifest["digest"] for m in self.list()):
            with self._lock:
                server = self._servers.pop(manifest["digest"], None)
            if server is not None:
                server.stop()

    def chat(self, name: str, messages: Messages, **options: Any) -> ChatStream:
        """Stream an answer; ``options`` use Ollama's names (num_predict, stop, ...)."""
        manifest = self._read(name)
        server = self._server_for(manifest)
        merged = {**manifest["parameters"], **options}
        request = {_OPTIONS[k]: v for k, v in merged.items() if k in _OPTIONS}
        if manifest.get("system") and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": manifest["system"]}, *messages]
        chunks = server.stream_chat_chunks(messages, **request)
        return ChatStream(
            (text, {"done_reason": finish, "tokens": tokens} if finish else {})
            for text, finish, tokens in chunks
        )

    def health(self) -> BackendHealth:
        version = binary_version(self.binary)
        ok = bool(version) and not version.startswith("cannot run")
        running = sum(1 for s in self._servers.values() if s.running())
        return BackendHealth(
            ok, self.kind, version, renders_jinja=True, detail=f"{running} server(s) running"
        )

    def server_url(self, name: str) -> str:
        """The loopback URL of the llama-server answering for ``name`` (started if needed)."""
        return self._server_for(self._read(name)).url

    def _server_for(self, manifest: dict[str, Any]) -> LlamaServer:
        """The running server for the manifest's blob: started, or restarted if it died."""
        digest = manifest["digest"]
        with self._lock:
            server = self._servers.get(digest)
            if server is not None and server.running():
                return server
            if server is not None:
                self.restarts += 1
                self.events.emit(
                    Log("serve", f"llama-server for {manifest['name']} exited; restarting",
                        level="warning")
                )  # fmt: skip
            context = int(manifest["parameters"].get("num_ctx", self.default_context))
            server = LlamaServer(
                self.binary, Path(manifest["gguf"]),
                self.work_dir / "logs" / f"{digest.split(':')[1][:12]}.log",
                context=context, threads=self.threads,
                startup_timeout_s=self.startup_timeout_s,
            )  # fmt: skip
            server.start()
            self._servers[digest] = server
            return server

    @staticmethod
    def _published(manifest: dict[str, Any]) -> PublishedModel:
        return PublishedModel(
            name=manifest["name"], digest=manifest["digest"], size=int(manifest.get("size", 0)),
            system=manifest.get("system"), parameters=dict(manifest.get("parameters") or {}),
        )  # fmt: skip
