"""The sweep's console while it runs (rich): on a terminal, a bar of the scripts done and a
live line per script (queued, running, its exit and time); redirected output gets one line
per finished script, without control characters."""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from dynexport.sweep.plan import Job


class SweepProgress:
    """Told when each job starts and finishes (from the pool's threads)."""

    def __init__(self, console: Console, jobs: list[Job], running_word: str = "running"):
        self.console = console
        self.live = console.is_terminal
        self.running_word = running_word
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                                 TimeElapsedColumn(), console=console)
        self.total = self.progress.add_task("sweep", total=len(jobs), status="")
        self.lines: dict[str, TaskID] = {}
        self._lock = threading.Lock()
        if self.live:
            for job in jobs:
                self.lines[job.name] = self.progress.add_task(
                    f"  {escape(job.script)}", total=1, status="[dim]queued[/]", start=False)

    def __enter__(self) -> SweepProgress:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.live:
            self.progress.stop()

    def started(self, job: Job) -> None:
        with self._lock:
            if job.name in self.lines:
                self.progress.start_task(self.lines[job.name])
                self.progress.update(self.lines[job.name],
                                     status=f"[yellow]{self.running_word}[/]")

    def finished(self, job: Job, row: dict[str, Any], reused: bool = False) -> None:
        ok = row["exit"] == 0
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        what = ("timed out" if row["timed_out"] else "lost" if row["exit"] is None
                else f"exit {row['exit']}")
        status = f"{mark} {what}" + (", unchanged: kept" if reused else
                                     f" after {row['seconds']} s")
        with self._lock:
            self.progress.advance(self.total)
            if job.name in self.lines:
                task = self.lines[job.name]
                self.progress.start_task(task)
                self.progress.update(task, completed=1, status=status)
                self.progress.stop_task(task)
            else:
                error = f": {escape(row['error'])}" if row["error"] and not row["timed_out"] \
                    else ""
                self.console.print(f"{escape(job.script)} {status}{error}", highlight=False,
                                   soft_wrap=True)
