"""The HTTP side of ``OllamaTestServer``: routing, JSON bodies, streamed JSON lines."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuneship.testing.ollama import OllamaTestServer


def make_handler(server: OllamaTestServer) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``server``'s state."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None  # keep test output clean

        def _send(self, status: int, body: Any, *, head: bool = False) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._chunked_body()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _chunked_body(self) -> bytes:
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()

        def _json(self) -> dict[str, Any] | None:
            try:
                value = json.loads(self._body() or b"{}")
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None

        def _begin(self) -> bool:
            server.requests.append((self.command, self.path))
            status = server.take_failure(self.command)
            if status is not None:
                self._body()
                self._send(status, {"error": "injected failure"})
                return False
            return True

        def do_HEAD(self) -> None:
            if not self._begin():
                return
            digest = self.path.removeprefix("/api/blobs/").replace("-", ":", 1)
            found = self.path.startswith("/api/blobs/") and digest in server.blobs
            self._send(200 if found else 404, None, head=True)

        def do_GET(self) -> None:
            if not self._begin():
                return
            if self.path == "/":
                data = b"Ollama is running"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif self.path == "/api/version":
                self._send(200, {"version": server.version})
            elif self.path == "/api/tags":
                self._send(*server.tags())
            else:
                self._send(404, {"error": "not found"})

        def do_DELETE(self) -> None:
            if not self._begin():
                return
            body = self._json()
            if self.path != "/api/delete":
                self._send(404, {"error": "not found"})
            elif body is None:
                self._send(400, {"error": "invalid JSON body"})
            else:
                self._send(*server.delete(body))

        def do_POST(self) -> None:
            if not self._begin():
                return
            if self.path.startswith("/api/blobs/"):
                self._send(*server.put_blob(self.path.removeprefix("/api/blobs/"), self._body()))
                return
            routes = {
                "/api/create": server.create, "/api/show": server.show,
                "/api/copy": server.copy,
            }  # fmt: skip
            body = self._json()
            if self.path not in routes and self.path != "/api/chat":
                self._send(404, {"error": "not found"})
            elif body is None:
                self._send(400, {"error": "invalid JSON body"})
            elif self.path == "/api/chat":
                self._chat(body)
            elif self.path == "/api/create" and body.get("stream", True) is not False:
                self._stream_create(body)
            else:
                self._send(*routes[self.path](body))

        def _stream_lines(self, lines: list[dict[str, Any]]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in lines:
                data = json.dumps(line).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def _stream_create(self, body: dict[str, Any]) -> None:
            # Streaming create reports failures inside a 200 stream, as Ollama does.
            status, answer = server.create(body)
            lines = [{"status": "parsing GGUF"}]
            lines.append(answer if status == 200 else {"error": answer["error"]})
            self._stream_lines(lines)

        def _chat(self, body: dict[str, Any]) -> None:
            status, answer = server.chat_chunks(body)
            if status != 200:
                self._send(status, answer)
            elif body.get("stream", True) is False:
                text = "".join(c["message"]["content"] for c in answer)
                final = {**answer[-1], "message": {"role": "assistant", "content": text}}
                self._send(200, final)
            else:
                self._stream_lines(answer)

    return Handler
