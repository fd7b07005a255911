"""Who may call a tuneship server: bearer tokens, the worker token, TLS and mutual TLS.

Two kinds of caller, two kinds of token (docs/security.md):

- people and scripts call the controller's user API (``PipelineService``) with a
  *user token* (``authorization: Bearer <token>``); the controller accepts several
  (``TUNESHIP_API_TOKENS``) so that a new one can be handed out before the old expires;
- the controller calls the stage services with the *worker token*
  (``TUNESHIP_WORKER_TOKEN``); stage servers accept nothing else, and the controller's
  user API refuses it (PERMISSION_DENIED): a leaked worker pod token cannot drive
  pipelines.

The variables (``TUNESHIP_API_TOKENS[_FILE]``, ``TUNESHIP_WORKER_TOKEN[_FILE]``, the
``TUNESHIP_TLS_*`` and ``TUNESHIP_WORKER_*`` paths, ``TUNESHIP_INSECURE``) are fields of
the settings model (``tuneship.common.settings.model``), read once by ``load_env`` with
its rules (a secret set both inline and as ``_FILE`` is an error naming both);
``AuthSettings.from_loaded`` turns those values into tokens and TLS settings and checks
what only makes sense together.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from tuneship.common.errors import FailedPrecondition, InvalidInput
from tuneship.common.settings.model import TuneshipEnv, variable

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

    @classmethod
    def from_loaded(cls, values: TuneshipEnv, insecure: bool = False) -> AuthSettings:
        """A server process's authentication from its settings (``insecure``: the
        ``--insecure`` option, which adds to ``TUNESHIP_INSECURE``).

        Raises ``InvalidInput`` naming the variable when a token list is empty, a
        certificate or key is not a file, or a TLS setting is incomplete."""
        served = _pair(values, "tls_cert", "tls_key")
        client_ca = _file(values, "tls_client_ca")
        if client_ca is not None and served is None:
            raise InvalidInput("client certificates are checked only over TLS",
                               where="TUNESHIP_TLS_CLIENT_CA",
                               hint="set TUNESHIP_TLS_CERT and TUNESHIP_TLS_KEY too")  # fmt: skip
        worker_ca = _file(values, "worker_ca")
        shown = _pair(values, "worker_cert", "worker_key")
        if shown is not None and worker_ca is None:
            raise InvalidInput(
                "a client certificate for the workers needs TLS to them",
                where="TUNESHIP_WORKER_CERT", hint="set TUNESHIP_WORKER_CA",
            )  # fmt: skip
        worker_tls = None
        if worker_ca is not None:
            cert, key = shown or (None, None)
            worker_tls = ClientTls(worker_ca, cert, key, server_name=values.worker_tls_name)
        return cls(
            api_tokens=_tokens(values.api_tokens, "api_tokens"),
            worker_tokens=_tokens(values.worker_token, "worker_token"),
            tls=ServerTls(*served, client_ca) if served else None,
            worker_tls=worker_tls,
            insecure=values.insecure or insecure,
        )


def parse_tokens(text: str) -> tuple[Token, ...]:
    """The tokens in ``text``: one a line or comma-separated, surrounding spaces dropped."""
    pieces = (p.strip() for line in text.splitlines() for p in line.split(","))
    return tuple(Token(p) for p in pieces if p)


def _tokens(secret: SecretStr | None, name: str) -> tuple[Token, ...]:
    if secret is None:
        return ()
    text = secret.get_secret_value()
    tokens = parse_tokens(text)
    if not tokens:
        # An empty inline value is unset, so an empty text came from the file: a
        # Secret mounted before its key was filled in, which must not mean "no auth".
        where = variable(name) if text.strip() else f"{variable(name)}_FILE"
        raise InvalidInput("no token in it", where=where,
                           hint="one token a line (a file) or comma-separated")  # fmt: skip
    return tokens


def _file(values: TuneshipEnv, name: str) -> Path | None:
    path: Path | None = getattr(values, name)
    if path is not None and not path.is_file():
        hint = "a PEM file (a kubernetes.io/tls Secret mounted as files)"
        raise InvalidInput(f"{path} is not a file", where=variable(name), hint=hint)
    return path


def _pair(values: TuneshipEnv, cert_name: str, key_name: str) -> tuple[Path, Path] | None:
    cert, key = _file(values, cert_name), _file(values, key_name)
    if (cert is None) != (key is None):
        given, missing = (cert_name, key_name) if key is None else (key_name, cert_name)
        hint = "a certificate needs its private key and the other way round"
        raise InvalidInput(f"{variable(given)} is set but {variable(missing)} is not",
                           where=variable(missing), hint=hint)  # fmt: skip
    return None if cert is None or key is None else (cert, key)


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
