"""The HTTP side of ``FakeKube``: a threading server, bearer-token authentication, RBAC,
the request log, discovery documents, and the hand-off to the REST verbs
(``handlers``). Every request is recorded in ``backend.requests``."""

from __future__ import annotations

import dataclasses
import json
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tuneship.testing.kube import errors, streams
from tuneship.testing.kube.errors import ApiError
from tuneship.testing.kube.handlers import ApiBackend, serve
from tuneship.testing.kube.rbac import ApiRequest, denial_reason, role_allows
from tuneship.testing.kube.routes import Route, discovery_document, parse_route, verb_for


def make_handler(backend: ApiBackend) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``backend``."""

    class Handler(_Handler):
        pass

    Handler.backend = backend
    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    backend: ApiBackend

    def log_message(self, format: str, *args: Any) -> None:
        return None  # keep test output clean

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # --- dispatch ----------------------------------------------------------------

    def _handle(self, method: str) -> None:
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            token = self._token()
            route = parse_route(split.path)
            if route is None:
                if method != "GET":
                    raise errors.method_not_allowed()
                self._record(ApiRequest(token, "get", "", "", "", "", "", True, split.path))
                host, port = self.connection.getsockname()[:2]
                address = f"{host}:{port}"
                document = discovery_document(split.path, self.backend.git_version, address)
                self._send_json(200, document)
                return
            verb = verb_for(method, route, query)
            self._authorize(token, verb, route, split.path)
            serve(self, self.backend, route, verb, query, raw)
        except ApiError as error:
            self._send_json(error.code, error.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _token(self) -> str:
        """The bearer token; ``""`` for an anonymous request (client-go sends no token to
        a plain-HTTP server); 401 for any other kind of credentials."""
        header = self.headers.get("Authorization", "")
        if not header:
            return ""
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            raise errors.unauthorized()
        return header[7:].strip()

    def _authorize(self, token: str, verb: str, route: Route, path: str) -> None:
        rtype = route.rtype
        request = ApiRequest(token, verb, rtype.group, rtype.resource, route.subresource,
                             route.namespace, route.name, True, path)  # fmt: skip
        allowed = role_allows(self.backend.role, self.backend.namespace, request)
        if not allowed:
            request = dataclasses.replace(request, allowed=False)
        self._record(request)
        if not allowed:
            raise errors.forbidden(
                rtype, route.name, denial_reason(request, self.backend.namespace)
            )

    def _record(self, request: ApiRequest) -> None:
        self.backend.requests.append(request)

    # --- responses ---------------------------------------------------------------

    def header(self, name: str) -> str:
        """A request header, ``""`` if absent."""
        return str(self.headers.get(name, ""))

    def json_body(self, raw: bytes) -> Any:
        """The request body as JSON; 400 if it is not."""
        try:
            return json.loads(raw or b"null")
        except json.JSONDecodeError as error:
            raise errors.bad_request(f"the request body is not JSON: {error}") from None

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
        kind = "application/json" if not isinstance(body, str) else "text/plain; charset=utf-8"
        self.send_bytes(status, data, kind)

    def send_json(self, status: int, body: Any) -> None:
        """A JSON response with a Content-Length."""
        self._send_json(status, body)

    def send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        """A whole response."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_chunked(self, content_type: str) -> None:
        """Begin a streamed 200 response."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True

    def chunk(self, data: bytes) -> None:
        """One chunk of a streamed response (empty data is skipped: it would end it)."""
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunked(self) -> None:
        """The terminating chunk."""
        self.wfile.write(b"0\r\n\r\n")

    def client_gone(self) -> bool:
        """Whether the client closed the connection."""
        return streams.peer_closed(self.connection)


class ApiServer:
    """The threading HTTP server on ``127.0.0.1:<free port>`` (HTTPS with ``tls``)."""

    def __init__(self, backend: ApiBackend, tls: ssl.SSLContext | None = None) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(backend))
        self._httpd.daemon_threads = True
        if tls is not None:
            # The handshake happens on first read, in the request's thread, not in accept.
            self._httpd.socket = tls.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        host, port = self._httpd.server_address[:2]
        self.url = f"{'https' if tls else 'http'}://{host!s}:{port}"

    def serve_forever(self) -> None:
        """Run the accept loop (in a thread of the caller's)."""
        self._httpd.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        """Stop accepting and close the listening socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
