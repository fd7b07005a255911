"""How the commands that talk to a controller authenticate: ``--token``/``--token-file``
(``TUNESHIP_TOKEN``/``TUNESHIP_TOKEN_FILE``), ``--ca`` (``TUNESHIP_CA``) and, for mutual
TLS, ``--cert``/``--key`` (``TUNESHIP_CERT``/``TUNESHIP_KEY``).

An option wins over its variable; the variables are read through the settings model
(``load_env``), with its rules: a token given both inline and as a file is an error,
on the command line as in the environment.

A command declares a ``connection: Connection`` parameter and is wrapped in
``controller_options``: the command line shows the five options in its place, so that
no command repeats them.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from tuneship.client import PipelineClient
from tuneship.common.auth import Token, parse_tokens
from tuneship.common.errors import InvalidInput
from tuneship.common.settings import load_env
from tuneship.common.settings.source import read_secret_file


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
    cert: Path | None, key: Path | None, env: Mapping[str, str],
) -> Connection:  # fmt: skip
    """The ``Connection`` of the options, and of ``env``'s ``TUNESHIP_TOKEN[_FILE]``,
    ``TUNESHIP_CA``, ``TUNESHIP_CERT`` and ``TUNESHIP_KEY`` for those not given.

    Raises ``InvalidInput`` naming the option or variable: both ``--token`` and
    ``--token-file``, a token file without a token, a certificate that is not a file."""
    if token and token_file is not None:
        raise InvalidInput("both --token and --token-file are given", where="--token",
                           hint="pass one: --token-file (kept out of ps and shell history) "
                           "or --token")  # fmt: skip
    values = load_env(env).values
    if token:
        text, where = token, "--token"
    elif token_file is not None:
        text, where = read_secret_file(token_file, "--token-file"), "--token-file"
    elif values.token is not None:  # an empty inline value is unset: empty is the file's
        text = values.token.get_secret_value()
        where = "TUNESHIP_TOKEN" if text.strip() else "TUNESHIP_TOKEN_FILE"
    else:
        text, where = "", ""
    tokens = parse_tokens(text)
    if where and not tokens:
        raise InvalidInput("no token in it", where=where, hint="the controller's user token")
    paths = []
    for option, given, default, variable in (
        ("--ca", ca, values.ca, "TUNESHIP_CA"),
        ("--cert", cert, values.cert, "TUNESHIP_CERT"),
        ("--key", key, values.key, "TUNESHIP_KEY"),
    ):
        path = given if given is not None else default
        if path is not None and not path.is_file():
            named = option if given is not None else variable
            raise InvalidInput(f"{path} is not a file", where=named, hint="a PEM file")
        paths.append(path)
    # A file may hold several tokens (the chart mounts the API's list): send the first.
    return Connection(tokens[0] if tokens else None, *paths)


TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        show_default=False,
        help="The controller's user token (better: --token-file) (or TUNESHIP_TOKEN).",
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option("--token-file", help="A file with the token (or TUNESHIP_TOKEN_FILE)."),
]
CaOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca",
        help="Check the controller's certificate with this CA (TLS even for host:port) "
        "(or TUNESHIP_CA).",
    ),
]
CertOpt = Annotated[
    Path | None,
    typer.Option("--cert", help="Client certificate (mutual TLS) (or TUNESHIP_CERT)."),
]
KeyOpt = Annotated[
    Path | None,
    typer.Option("--key", help="The client certificate's private key (or TUNESHIP_KEY)."),
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
            chosen = connection(**given, env=os.environ)
        except TuneshipError as exc:
            raise fail(exc) from exc
        return command(*args, connection=chosen, **kwargs)

    parameters = [*positional, *keyword, *added]
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper  # type: ignore[return-value]
