"""The gRPC side of ``common.auth``: the token check every server runs, TLS server
credentials, and channels that send a token (and speak TLS) for clients.

Health checks (``grpc.health.v1.Health``) need no token: the kubelet's gRPC probes
cannot send one, and "am I serving" tells nobody anything. Everything else, server
reflection included, does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

from tuneship.common.auth import TOKEN_HINT, AuthSettings, ClientTls, ServerTls, Token, matches_any
from tuneship.common.wire import ANSWERED_KEY, ServerSecurity

OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
"""What anybody may call: the health service (kubelet probes, load balancers)."""
BEARER = "bearer "


def offered_token(metadata: Any) -> str | None:
    """The bearer token in call metadata, if any."""
    for key, value in metadata or ():
        if key == "authorization" and str(value)[: len(BEARER)].lower() == BEARER:
            return str(value)[len(BEARER) :].strip()
    return None


class TokenGuard(grpc.ServerInterceptor):
    """Lets a call through when it carries one of ``accepted``; refuses it with
    PERMISSION_DENIED when it carries one of ``refused`` (a valid token of the wrong
    kind), with UNAUTHENTICATED otherwise. The refusal is decided before the method
    runs: a client-streaming upload is refused before one chunk is read."""

    def __init__(
        self, accepted: tuple[Token, ...], refused: tuple[Token, ...], server: str, denied: str
    ) -> None:
        self.accepted, self.refused = accepted, refused
        self.server, self.denied = server, denied

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        if details.method in OPEN_METHODS:
            return continuation(details)
        offered = offered_token(details.invocation_metadata)
        if offered is not None and matches_any(self.accepted, offered):
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None
        if offered is None:
            code = grpc.StatusCode.UNAUTHENTICATED
            message = f"{self.server} needs a token (authorization: Bearer); {TOKEN_HINT}"
        elif matches_any(self.refused, offered):
            code, message = grpc.StatusCode.PERMISSION_DENIED, self.denied
        else:
            code = grpc.StatusCode.UNAUTHENTICATED
            message = f"the token is not valid for {self.server}; {TOKEN_HINT} with a valid one"
        return _refusal(handler, code, message)


def _refusal(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same shape as ``handler`` that answers ``code``."""

    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.set_trailing_metadata(((ANSWERED_KEY, "1"),))
        context.abort(code, message)

    codecs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}  # fmt: skip
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **codecs)
    return grpc.stream_stream_rpc_method_handler(refuse, **codecs)


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """TLS for a server; with a client CA, clients without its certificate are refused
    during the handshake."""
    ca = tls.client_ca.read_bytes() if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def user_api_security(auth: AuthSettings) -> ServerSecurity:
    """The controller's user API: user tokens in, the worker token refused."""
    guard = None
    if auth.api_tokens:
        denied = ("the worker token is for the stage services, not the user API; "
                  f"{TOKEN_HINT} with a user token")  # fmt: skip
        guard = TokenGuard(auth.api_tokens, auth.worker_tokens, "this controller", denied)
    return _security(guard, auth.tls)


def stage_security(auth: AuthSettings) -> ServerSecurity:
    """A stage service: the worker token only. It never holds user tokens, so a user
    token is just a wrong token here (UNAUTHENTICATED)."""
    guard = None
    if auth.worker_tokens:
        denied = "only the controller calls the stage services"
        guard = TokenGuard(auth.worker_tokens, (), "this stage service (worker token)", denied)
    return _security(guard, auth.tls)


def _security(guard: TokenGuard | None, tls: ServerTls | None) -> ServerSecurity:
    return ServerSecurity(
        interceptors=[guard] if guard is not None else [],
        credentials=server_credentials(tls) if tls is not None else None,
    )


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call of a channel. (gRPC's own
    call credentials insist on TLS; a token over loopback in the clear is fine.)"""

    def __init__(self, token: Token) -> None:
        self._token = token

    def _with_token(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self._token.reveal()}")]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            details.wait_for_ready, details.compression)  # fmt: skip

    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Callable, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Callable, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    """TLS checked against ``tls.ca`` (None: the system's roots, or the file named by
    ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``), showing the client certificate if given."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes() if tls.ca is not None else None,
        private_key=tls.key.read_bytes() if tls.key is not None else None,
        certificate_chain=tls.cert.read_bytes() if tls.cert is not None else None,
    )


def dial(
    target: str,
    *,
    token: Token | None = None,
    tls: ClientTls | None = None,
    options: list[tuple[str, Any]] | None = None,
) -> grpc.Channel:
    """A channel to ``host:port``: TLS when ``tls`` is given, else in the clear; every
    call carries ``token`` when given."""
    chosen = list(options or [])
    if tls is None:
        channel = grpc.insecure_channel(target, options=chosen)
    else:
        if tls.server_name:
            chosen.append(("grpc.ssl_target_name_override", tls.server_name))
        channel = grpc.secure_channel(target, channel_credentials(tls), options=chosen)
    if token is None:
        return channel
    return grpc.intercept_channel(channel, _BearerToken(token))


def worker_dialer(auth: AuthSettings) -> Callable[[str], grpc.Channel]:
    """How the controller opens a channel to a stage worker: the worker token, and
    TLS when ``auth.worker_tls`` is set."""
    token, tls = auth.worker_token, auth.worker_tls
    return lambda address: dial(address, token=token, tls=tls)
