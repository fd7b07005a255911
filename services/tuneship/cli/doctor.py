"""``tuneship doctor``: what tuneship found, and what to do about what is missing."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tuneship.common.settings import Settings
from tuneship.common.toolchain import BINARIES, BUILD_HINT, CONVERT_SCRIPT, find_toolchain


def toolchain_report(settings: Settings, console: Console) -> int:
    """Print the toolchain table; return 0 when complete, 1 when a piece is missing."""
    toolchain = find_toolchain(settings)
    table = Table(title=f"llama.cpp toolchain (llama-cpp-python {toolchain.version})")
    table.add_column("piece")
    table.add_column("status")
    table.add_column("path")
    for name in BINARIES:
        path = toolchain.binaries.get(name)
        table.add_row(name, "[green]ok[/]" if path else "[red]missing[/]", str(path or "-"))
    script = toolchain.convert_script
    table.add_row(
        CONVERT_SCRIPT, "[green]ok[/]" if script else "[red]missing[/]", str(script or "-")
    )
    console.print(table)
    console.print(f"llama.cpp commit: {toolchain.commit}")
    missing = toolchain.missing()
    if missing:
        console.print(f"[red]missing:[/] {', '.join(missing)}\n  hint: {BUILD_HINT}")
        return 1
    return 0
