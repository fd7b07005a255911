"""Rendering a pipeline's events in the terminal: one bar per stage, notes above."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tuneship.client import PipelineClient, PipelineInfo, WatchEvent


class StageBars:
    """One progress bar per stage, fed by Watch events; log lines printed above."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.fields[stage]:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[str, Any] = {}

    def show(self, event: WatchEvent) -> None:
        console = self.progress.console
        if event.kind == "progress" and event.data.get("unit") == "bytes":
            if event.stage in self.tasks:  # store transfers: a note, not the stage's bar
                self.progress.update(
                    self.tasks[event.stage], note=event.data.get("message", "")[:40]
                )
        elif event.kind == "progress" and event.stage:
            task = self.tasks.get(event.stage)
            total = event.data["total"] or None
            if task is None:
                task = self.progress.add_task("", total=total, stage=event.stage, note="")
                self.tasks[event.stage] = task
            note = event.data.get("message") or event.data.get("unit", "")
            self.progress.update(task, completed=event.data["step"], total=total, note=note[:40])
        elif event.kind == "metrics" and event.stage in self.tasks:
            loss = event.data.get("loss")
            if loss is not None:
                note = f"loss {loss:.3f}  {event.data.get('tokens_per_s', 0):.0f} tok/s"
                self.progress.update(self.tasks[event.stage], note=note)
        elif event.kind == "log":
            level = event.data.get("level", "info")
            if level != "info":
                style = "yellow" if level == "warning" else "red"
                console.print(f"[{style}]{event.stage}: {escape(event.text)}[/]")
        elif event.kind == "transition" and event.text:
            console.print(f"[cyan]•[/] {escape(event.text)}")


def follow(client: PipelineClient, pipeline_id: str, console: Console) -> PipelineInfo:
    """Render a pipeline's events until it ends; return its final state."""
    bars = StageBars(console)
    with bars.progress:
        for event in client.watch(pipeline_id):
            bars.show(event)
    return client.get(pipeline_id)
