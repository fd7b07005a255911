"""How the commands that talk to a controller authenticate: ``--token``/``--token-file``
(``TUNESHIP_TOKEN``/``TUNESHIP_TOKEN_FILE``), ``--ca`` (``TUNESHIP_CA``) and, for mutual
TLS, ``--cert``/``--key`` (``TUNESHIP_CERT``/``TUNESHIP_KEY``).

A command declares a ``connection: Connection`` parameter and is wrapped in
``controller_options``: the command line shows the five options in its place, so that
no command repeats them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from tuneship.client import PipelineClient
from tuneship.common.auth import Token, read_tokens
from tuneship.common.errors import InvalidInput


@dataclass(frozen=True)
class Connection:
    """The credentials given on the command line or in the environment."""

    token: Token | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def client(self, controller: str, timeout_s: float = 30.0) -> PipelineClient:
        """A client of ``controller`` with these credentials."""
        return PipelineClient(
            controller, timeout_s, token=self.token, ca=self.ca, cert=self.cert, key=self.key
        )


def connection(
    token: str | None, token_file: Path | None, ca: Path | None,
    cert: Path | None, key: Path | None,
) -> Connection:  # fmt: skip
    """The ``Connection`` of the options; ``--token`` wins over ``--token-file``."""
    chosen: Token | None = None
    if token:
        chosen = Token(token.strip())
    elif token_file is not None:
        tokens = read_tokens({"TUNESHIP_TOKEN_FILE": str(token_file)}, "TUNESHIP_TOKEN")
        chosen = tokens[0]
    for where, path in (("--ca", ca), ("--cert", cert), ("--key", key)):
        if path is not None and not path.is_file():
            raise InvalidInput(f"{path} is not a file", where=where, hint="a PEM file")
    return Connection(chosen, ca, cert, key)


TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="TUNESHIP_TOKEN",
        show_default=False,
        help="The controller's user token (better: --token-file).",
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option("--token-file", envvar="TUNESHIP_TOKEN_FILE", help="A file with the token."),
]
CaOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca",
        envvar="TUNESHIP_CA",
        help="Check the controller's certificate with this CA (TLS even for host:port).",
    ),
]
CertOpt = Annotated[
    Path | None,
    typer.Option("--cert", envvar="TUNESHIP_CERT", help="Client certificate (mutual TLS)."),
]
KeyOpt = Annotated[
    Path | None,
    typer.Option("--key", envvar="TUNESHIP_KEY", help="The client certificate's private key."),
]


def _options(
    token: TokenOpt = None, token_file: TokenFileOpt = None, ca: CaOpt = None,
    cert: CertOpt = None, key: KeyOpt = None,
) -> None:  # fmt: skip
    """Only its signature is used: the options ``controller_options`` adds."""


F = TypeVar("F", bound=Callable[..., Any])
_NAMES = tuple(inspect.signature(_options).parameters)


def controller_options(command: F) -> F:
    """Replace ``command``'s ``connection`` parameter by the credential options."""
    # Evaluated annotations: typer reads them from __signature__ as they are.
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "connection"]
    added = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
             for p in inspect.signature(_options, eval_str=True).parameters.values()]  # fmt: skip
    positional = [p for p in kept if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    keyword = [p for p in kept if p.kind is inspect.Parameter.KEYWORD_ONLY]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from tuneship.cli.errors import fail
        from tuneship.common.errors import TuneshipError

        given = {name: kwargs.pop(name, None) for name in _NAMES}
        try:
            chosen = connection(**given)
        except TuneshipError as exc:
            raise fail(exc) from exc
        return command(*args, connection=chosen, **kwargs)

    parameters = [*positional, *keyword, *added]
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper  # type: ignore[return-value]
