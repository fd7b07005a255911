"""A failing command says what, where and what to do, exactly as written."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from tuneship.cli.errors import fail
from tuneship.cli.main import app
from tuneship.common.errors import InvalidInput
from typer.testing import CliRunner

pytestmark = pytest.mark.unit


def test_markup_in_an_error_prints_literally(capsys: pytest.CaptureFixture[str]) -> None:
    error = InvalidInput(
        "the template starts a turn with [INST] and closes [/bold] nothing",
        where="chat_template.jinja:3",
        hint="keep [INST] ... [/INST] pairs",
    )
    exit_ = fail(error)
    assert isinstance(exit_, typer.Exit) and exit_.exit_code == 2
    assert fail(error, code=1).exit_code == 1
    printed = capsys.readouterr().err
    assert printed.startswith(
        "error: chat_template.jinja:3: the template starts a turn with [INST] and closes "
        "[/bold] nothing\n  hint: keep [INST] ... [/INST] pairs\n"
    )


def test_a_command_prints_a_user_path_with_brackets_literally(tmp_path: Path) -> None:
    spec = tmp_path / "chat [INST] [/bold].yaml"
    result = CliRunner().invoke(app, ["train", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert f"{spec}" in result.stderr
