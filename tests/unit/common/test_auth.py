"""A server's tokens and TLS come from the settings model, with its one rule for
secrets (inline or ``_FILE``, never both); what only makes sense together is checked,
naming the variable, and no token shows in a repr or a log line."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from tuneship.common.auth import AuthSettings, ClientTls, ServerTls, Token
from tuneship.common.errors import InvalidInput
from tuneship.common.logs import configure_logging
from tuneship.common.settings import load_env

pytestmark = pytest.mark.unit


def auth(env: dict[str, str], insecure: bool = False) -> AuthSettings:
    return AuthSettings.from_loaded(load_env(env).values, insecure=insecure)


def test_tokens_from_a_file_or_inline_and_never_shown(tmp_path: Path) -> None:
    (tmp_path / "api").write_text("new-token-2 \nold-token-1\n")
    got = auth({"TUNESHIP_API_TOKENS_FILE": str(tmp_path / "api"),
                "TUNESHIP_WORKER_TOKEN": "worker-a, worker-b"})  # fmt: skip
    assert got.api_tokens == (Token("new-token-2"), Token("old-token-1"))
    assert got.worker_token == Token("worker-a") and len(got.worker_tokens) == 2
    for secret in ("new-token-2", "old-token-1", "worker-a"):
        assert secret not in repr(got) and secret not in str(got)
    assert auth({}) == AuthSettings()


def test_a_token_set_inline_and_as_a_file_is_refused_naming_both(tmp_path: Path) -> None:
    (tmp_path / "api").write_text("from-the-file\n")
    with pytest.raises(InvalidInput) as both:
        auth({"TUNESHIP_API_TOKENS": "inline", "TUNESHIP_API_TOKENS_FILE": str(tmp_path / "api")})
    assert both.value.where == "TUNESHIP_API_TOKENS"
    assert "TUNESHIP_API_TOKENS and TUNESHIP_API_TOKENS_FILE" in both.value.message
    assert "from-the-file" not in both.value.render() and "inline" not in both.value.render()


def test_a_token_file_without_a_token_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InvalidInput, match="no token") as empty:
        auth({"TUNESHIP_WORKER_TOKEN_FILE": str(tmp_path / "empty")})
    assert empty.value.where == "TUNESHIP_WORKER_TOKEN_FILE"
    with pytest.raises(InvalidInput, match="no token") as commas:
        auth({"TUNESHIP_API_TOKENS": " , "})
    assert commas.value.where == "TUNESHIP_API_TOKENS"


def test_tls_settings_are_built_and_checked(tmp_path: Path) -> None:
    crt, key, ca = (tmp_path / n for n in ("tls.crt", "tls.key", "ca.crt"))
    for path in (crt, key, ca):
        path.write_text("PEM")
    got = auth({"TUNESHIP_TLS_CERT": str(crt), "TUNESHIP_TLS_KEY": str(key),
                "TUNESHIP_TLS_CLIENT_CA": str(ca), "TUNESHIP_WORKER_CA": str(ca),
                "TUNESHIP_WORKER_CERT": str(crt), "TUNESHIP_WORKER_KEY": str(key),
                "TUNESHIP_WORKER_TLS_NAME": "worker.local"}, insecure=True)  # fmt: skip
    assert got.tls == ServerTls(crt, key, ca)
    assert got.worker_tls == ClientTls(ca, crt, key, server_name="worker.local")
    assert got.insecure
    refused = {
        "TUNESHIP_TLS_KEY": {"TUNESHIP_TLS_CERT": str(crt)},
        "TUNESHIP_TLS_CERT": {
            "TUNESHIP_TLS_CERT": str(tmp_path / "absent"),
            "TUNESHIP_TLS_KEY": str(key),
        },
        "TUNESHIP_TLS_CLIENT_CA": {"TUNESHIP_TLS_CLIENT_CA": str(ca)},
        "TUNESHIP_WORKER_CERT": {"TUNESHIP_WORKER_CERT": str(crt), "TUNESHIP_WORKER_KEY": str(key)},
    }
    for where, env in refused.items():
        with pytest.raises(InvalidInput) as caught:
            auth(env)
        assert caught.value.where == where, env


def test_each_token_of_a_list_is_masked_in_the_logs(tmp_path: Path) -> None:
    (tmp_path / "api").write_text("token-one-1a2b\ntoken-two-3c4d\n")
    loaded = load_env({"TUNESHIP_API_TOKENS_FILE": str(tmp_path / "api")})
    stream = io.StringIO()
    handler = configure_logging("text", "info", loaded.secrets(), stream=stream)
    try:
        logging.getLogger("tuneship.test").warning("a client sent token-two-3c4d")
    finally:
        logging.getLogger().removeHandler(handler)
    assert "token-two-3c4d" not in stream.getvalue() and "***" in stream.getvalue()
