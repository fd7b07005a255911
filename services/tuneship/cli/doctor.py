"""``tuneship doctor``: what tuneship found, and what to do about what is missing."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneship.common.settings import Settings
from tuneship.common.toolchain import BINARIES, BUILD_HINT, CONVERT_SCRIPT, find_toolchain


def toolchain_report(settings: Settings, console: Console) -> int:
    """Print the toolchain table; return 0 when complete, 1 when a piece is missing."""
    toolchain = find_toolchain(settings)
    table = Table(title=f"llama.cpp toolchain (llama-cpp-python {toolchain.version})")
    table.add_column("piece")
    table.add_column("status")
    table.add_column("path", overflow="fold")  # never elide a path
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


def model_report(path: Path, console: Console, *, fix: bool = False) -> int:
    """Print every check of an HF directory or GGUF; with ``fix``, repair what is safe.

    Returns 0 when no error remains, 2 otherwise (a model that fails a check is bad
    input, as a spec that fails ``validate`` is).
    """
    from tuneship.cli.train import quiet_libraries
    from tuneship.converter import check_model, fix_hf

    quiet_libraries()  # the table says what transformers would warn about
    report = check_model(path)
    done: list[str] = []
    if fix and report.kind == "hf":
        done, report = fix_hf(path)
    elif fix:
        console.print("[yellow]--fix repairs HF model directories; re-create a GGUF instead[/]")
    table = Table(title=f"{'GGUF' if report.kind == 'gguf' else 'HF model'}: {path}")
    for column in ("check", "status", "finding", "fix"):
        table.add_column(column, overflow="fold")
    colours = {"ok": "green", "warning": "yellow", "error": "red"}
    for f in report.findings:
        status = f"[{colours[f.severity]}]{f.severity}[/]"
        table.add_row(f.check, status, escape(f.message), escape(f.fix or ""))
    console.print(table)
    for line in done:
        console.print(f"[green]fixed:[/] {escape(line)}")
    facts = ", ".join(f"{k}={v}" for k, v in report.facts.items() if not isinstance(v, dict))
    console.print(f"[dim]{escape(facts)}[/]")
    return 0 if report.ok else 2
