"""A client command's credentials: an option wins over its variable, the variables are
read through the settings model, and a token given twice is refused, not guessed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tuneship.cli.connect import Connection, connection
from tuneship.common.auth import Token
from tuneship.common.errors import InvalidInput

pytestmark = pytest.mark.unit


def connect(env: dict[str, str], token: str | None = None, token_file: Path | None = None,
            ca: Path | None = None) -> Connection:  # fmt: skip
    return connection(token, token_file, ca, None, None, env=env)


def test_an_option_wins_over_the_environment(tmp_path: Path) -> None:
    mine = tmp_path / "token"
    mine.write_text("first-token\nsecond-token\n")
    ca = tmp_path / "ca.crt"
    ca.write_text("PEM")
    env = {"TUNESHIP_TOKEN": "from-env", "TUNESHIP_CA": str(ca)}
    assert connect(env, token_file=mine).token == Token("first-token")
    assert connect(env, token="given").token == Token("given")
    by_env = connect(env)
    assert by_env.token == Token("from-env") and by_env.ca == ca
    by_file = connect({"TUNESHIP_TOKEN_FILE": str(mine)})
    assert by_file.token == Token("first-token")
    assert connect({}).token is None


def test_a_token_given_twice_or_empty_is_refused_naming_where(tmp_path: Path) -> None:
    mine = tmp_path / "token"
    mine.write_text("a-token\n")
    cases: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
        "--token": ({}, {"token": "x", "token_file": mine}),
        "TUNESHIP_TOKEN": ({"TUNESHIP_TOKEN": "x", "TUNESHIP_TOKEN_FILE": str(mine)}, {}),
        "--token-file": ({}, {"token_file": tmp_path / "absent"}),
        "TUNESHIP_CA": ({"TUNESHIP_CA": str(tmp_path / "absent")}, {}),
    }
    for where, (env, options) in cases.items():
        with pytest.raises(InvalidInput) as caught:
            connect(env, **options)
        assert caught.value.where == where
        assert "a-token" not in caught.value.render()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InvalidInput, match="no token") as empty:
        connect({"TUNESHIP_TOKEN_FILE": str(tmp_path / "empty")})
    assert empty.value.where == "TUNESHIP_TOKEN_FILE"
