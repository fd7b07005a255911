"""How every ``tuneship`` command reports a failure."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from tuneship.common.errors import TuneshipError


def print_error(error: TuneshipError, label: str = "error") -> None:
    """Print what went wrong, where and the hint on stderr, exactly as written.

    Messages quote user data (chat templates with ``[INST]``, file contents), so any
    rich markup in them is escaped; lines are not wrapped, so paths stay whole.
    """
    Console(stderr=True).print(
        f"[bold red]{escape(label)}:[/] {escape(error.render())}", highlight=False, soft_wrap=True
    )


def fail(error: TuneshipError, code: int = 2) -> typer.Exit:
    """Print ``error`` and return the exit to raise: ``raise fail(exc) from exc``."""
    print_error(error)
    return typer.Exit(code=code)
