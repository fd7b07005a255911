"""Who may call a tuneship server: bearer tokens, the worker token, TLS and mutual TLS.

Two kinds of caller, two kinds of token (docs/security.md):

- people and scripts call the controller's user API (``PipelineService``) with a
  *user token* (``authorization: Bearer <token>``); the controller accepts several
  (``TUNESHIP_API_TOKENS``) so that a new one can be handed out before the old expires;
- the controller calls the stage services with the *worker token*
  (``TUNESHIP_WORKER_TOKEN``); stage servers accept nothing else, and the controller's
  user API refuses it (PERMISSION_DENIED): a leaked worker pod token cannot drive
  pipelines.

Environment (read here, once, by ``auth_from_env``; files win over inline values,
and secrets are best mounted as files):

- ``TUNESHIP_API_TOKENS`` / ``TUNESHIP_API_TOKENS_FILE``: tokens the user API accepts
  (comma- or newline-separated).
- ``TUNESHIP_WORKER_TOKEN`` / ``TUNESHIP_WORKER_TOKEN_FILE``: the worker token; several
  while rotating, the first is the one the controller sends.
- ``TUNESHIP_TLS_CERT``, ``TUNESHIP_TLS_KEY``: serve TLS with this certificate chain and
  key (PEM); ``TUNESHIP_TLS_CLIENT_CA``: also require client certificates signed by
  this CA (mutual TLS).
- ``TUNESHIP_WORKER_CA``: the controller dials the stage services with TLS, checking
  their certificates against this CA; ``TUNESHIP_WORKER_CERT`` / ``TUNESHIP_WORKER_KEY``:
  the client certificate it shows them (their mutual TLS);
  ``TUNESHIP_WORKER_TLS_NAME``: the name their certificates carry (a Job pod is dialled
  by IP, which no certificate names).
- ``TUNESHIP_INSECURE``: ``1`` lets a server listen beyond loopback with no token.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tuneship.common.errors import FailedPrecondition, InvalidInput

VARIABLES = {
    "TUNESHIP_API_TOKENS": "tokens the controller's user API accepts (also _FILE)",
    "TUNESHIP_API_TOKENS_FILE": "a file of the user API's tokens, one a line",
    "TUNESHIP_WORKER_TOKEN": "the worker token (also _FILE)",
    "TUNESHIP_WORKER_TOKEN_FILE": "a file holding the worker token",
    "TUNESHIP_TLS_CERT": "the server's TLS certificate (PEM)",
    "TUNESHIP_TLS_KEY": "the server's TLS key (PEM)",
    "TUNESHIP_TLS_CLIENT_CA": "require client certificates of this CA (mutual TLS)",
    "TUNESHIP_WORKER_CA": "dial the stage services with TLS, checked with this CA",
    "TUNESHIP_WORKER_CERT": "the controller's client certificate for the stage services",
    "TUNESHIP_WORKER_KEY": "its key",
    "TUNESHIP_WORKER_TLS_NAME": "the name the stage services' certificates carry",
    "TUNESHIP_INSECURE": "1: serve beyond loopback without tokens",
    "TUNESHIP_TOKEN": "the CLI's user token",
    "TUNESHIP_TOKEN_FILE": "a file holding the CLI's user token",
    "TUNESHIP_CA": "the CA the CLI checks the controller with",
    "TUNESHIP_CERT": "the CLI's client certificate (mutual TLS)",
    "TUNESHIP_KEY": "its key",
}
"""Every variable of this module and of the CLI's credentials, with what it is for
(read by ``auth_from_env`` and the CLI's options, not by the settings model)."""

TOKEN_HINT = "pass --token or --token-file, or set TUNESHIP_TOKEN or TUNESHIP_TOKEN_FILE"
"""What a client is told to do when a server wants a token (never the token itself)."""


class Token:
    """A secret that is compared in constant time and never shown (repr, str, logs)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not value or value != value.strip():
            raise ValueError("a token is a non-empty string without surrounding spaces")
        self._value = value

    def matches(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode(), self._value.encode())

    def reveal(self) -> str:
        """The token itself: only for the ``authorization`` header it is sent in."""
        return self._value

    def __repr__(self) -> str:
        return "Token(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Token) and other.matches(self._value)

    def __hash__(self) -> int:
        return hash(Token)


def matches_any(tokens: tuple[Token, ...], offered: str) -> bool:
    """Whether ``offered`` is one of ``tokens``; every token is compared (no early exit)."""
    found = False
    for token in tokens:
        found = token.matches(offered) | found
    return found


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate; with ``client_ca`` its clients must show one too."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class ClientTls:
    """How a client checks a server and proves itself: ``ca`` (None: the system's
    roots), an optional client certificate, and the name the server's certificate
    must carry when it differs from the host dialled."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class AuthSettings:
    """A server's (and the controller's outgoing) authentication; empty: none at all,
    as embedded mode on loopback runs."""

    api_tokens: tuple[Token, ...] = ()
    """Tokens the controller's user API accepts (``TUNESHIP_API_TOKENS[_FILE]``)."""
    worker_tokens: tuple[Token, ...] = ()
    """The worker token(s): what stage servers accept and the controller refuses on
    its user API; the controller sends the first (``TUNESHIP_WORKER_TOKEN[_FILE]``)."""
    tls: ServerTls | None = None
    """Serve TLS (``TUNESHIP_TLS_CERT``, ``TUNESHIP_TLS_KEY``, ``TUNESHIP_TLS_CLIENT_CA``)."""
    worker_tls: ClientTls | None = None
    """Dial the stage services with TLS (``TUNESHIP_WORKER_CA``, ``_CERT``, ``_KEY``,
    ``TUNESHIP_WORKER_TLS_NAME``); None: in the clear."""
    insecure: bool = False
    """Listen beyond loopback without a token (``--insecure``, ``TUNESHIP_INSECURE``)."""

    @property
    def worker_token(self) -> Token | None:
        """The token the controller sends to stage services."""
        return self.worker_tokens[0] if self.worker_tokens else None


def read_tokens(env: Mapping[str, str], name: str) -> tuple[Token, ...]:
    """Tokens from ``<name>_FILE`` (a file, one or more) or else ``<name>``."""
    path = env.get(f"{name}_FILE", "")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(
                f"cannot read the token file: {exc.strerror}", where=f"{name}_FILE",
                hint="mount the Secret there or point the variable at the file",
            ) from exc  # fmt: skip
        if not text.strip():
            raise InvalidInput("the token file is empty", where=f"{name}_FILE")
    else:
        text = env.get(name, "")
    pieces = (p.strip() for line in text.splitlines() for p in line.split(","))
    return tuple(Token(p) for p in pieces if p)


def _path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name, "")
    if not value:
        return None
    if not Path(value).is_file():
        hint = "a PEM file (a kubernetes.io/tls Secret mounted as files)"
        raise InvalidInput(f"{value} is not a file", where=name, hint=hint)
    return Path(value)


def _pair(env: Mapping[str, str], cert_name: str, key_name: str) -> tuple[Path, Path] | None:
    cert, key = _path(env, cert_name), _path(env, key_name)
    if (cert is None) != (key is None):
        given, missing = (cert_name, key_name) if key is None else (key_name, cert_name)
        hint = "a certificate needs its private key and the other way round"
        raise InvalidInput(f"{given} is set but {missing} is not", where=missing, hint=hint)
    return None if cert is None or key is None else (cert, key)


def auth_from_env(env: Mapping[str, str]) -> AuthSettings:
    """The authentication settings of a server process (see the module docstring).

    Raises ``InvalidInput`` naming the variable when a file is missing or a TLS
    setting is incomplete."""
    served = _pair(env, "TUNESHIP_TLS_CERT", "TUNESHIP_TLS_KEY")
    client_ca = _path(env, "TUNESHIP_TLS_CLIENT_CA")
    if client_ca is not None and served is None:
        raise InvalidInput("client certificates are checked only over TLS",
                           where="TUNESHIP_TLS_CLIENT_CA",
                           hint="set TUNESHIP_TLS_CERT and TUNESHIP_TLS_KEY too")  # fmt: skip
    worker_ca = _path(env, "TUNESHIP_WORKER_CA")
    shown = _pair(env, "TUNESHIP_WORKER_CERT", "TUNESHIP_WORKER_KEY")
    if shown is not None and worker_ca is None:
        raise InvalidInput("a client certificate for the workers needs TLS to them",
                           where="TUNESHIP_WORKER_CERT", hint="set TUNESHIP_WORKER_CA")  # fmt: skip
    worker_tls = None
    if worker_ca is not None:
        cert, key = shown or (None, None)
        name = env.get("TUNESHIP_WORKER_TLS_NAME") or None
        worker_tls = ClientTls(worker_ca, cert, key, server_name=name)
    return AuthSettings(
        api_tokens=read_tokens(env, "TUNESHIP_API_TOKENS"),
        worker_tokens=read_tokens(env, "TUNESHIP_WORKER_TOKEN"),
        tls=ServerTls(*served, client_ca) if served else None,
        worker_tls=worker_tls,
        insecure=env.get("TUNESHIP_INSECURE", "").lower() in ("1", "true", "yes"),
    )


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(component: str, host: str, auth: AuthSettings) -> None:
    """Refuse to serve ``component`` beyond loopback with no token to check, unless
    ``auth.insecure``: an open controller runs anybody's pipelines, an open stage
    service anybody's tasks. Raises ``FailedPrecondition`` naming what to set."""
    controller = component == "controller"
    tokens = auth.api_tokens if controller else auth.worker_tokens
    if tokens or auth.insecure or is_loopback(host):
        return
    variable = "TUNESHIP_API_TOKENS" if controller else "TUNESHIP_WORKER_TOKEN"
    raise FailedPrecondition(
        f"refusing to serve the {component} on {host} without authentication: anyone "
        "who reaches this address could call it",
        where="--host",
        hint=f"set {variable}_FILE (or {variable}) to the token(s) callers must send; "
        "or listen on 127.0.0.1; or pass --insecure (TUNESHIP_INSECURE=1) to serve "
        "without authentication on purpose",
    )
