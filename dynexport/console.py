"""Terminal rendering: a live line per stage while the pipeline runs (rich), naming the step
the stage is in (progress.step) with its elapsed time. Only a terminal gets the live line;
redirected output gets the finished stages, without control characters."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from dynexport import progress
from dynexport.errors import format_traceback
from dynexport.stage import StageRecord

_MARKS = {"ok": "[green]✓[/]", "failed": "[red]✗[/]", "skipped": "[dim]–[/]"}


class StageProgress:
    """A pipeline observer: a spinner while a stage runs, then its outcome."""

    def __init__(self, console: Console, debug: bool = False):
        self.console = console
        self.debug = debug
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=console)
        self.tasks: dict[str, TaskID] = {}

        self.current: str | None = None
        self._listening = progress.listening(self.step)

    def __enter__(self) -> StageProgress:
        self.progress.start()
        self._listening.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._listening.__exit__(*exc_info)
        self.progress.stop()

    def started(self, name: str) -> None:
        self.current = name
        self.tasks[name] = self.progress.add_task(f"{name} …", total=1)

    def step(self, name: str, stage: str | None = None) -> None:
        """A step inside a running stage: shown on its live line (a terminal only)."""
        stage = stage or self.current or ""
        task = self.tasks.get(stage)
        if task is not None and self.console.is_terminal:
            self.progress.update(task, description=f"{stage} · {name} …")

    def finished(self, record: StageRecord, error: BaseException | None) -> None:
        task = self.tasks.get(record.name)
        if task is None:
            task = self.progress.add_task("", total=1)
        note = (f" [dim]{escape(record.error)}[/]" if record.status == "skipped" and record.error
                else "")
        self.progress.update(task, completed=1,
                             description=f"{_MARKS[record.status]} {record.name}{note}")
        if record.status == "failed" and record.error:
            first = record.error.splitlines()[0]
            # escaped: an error may hold brackets, e.g. `pip install -e ".[precision]"`
            self.progress.console.print(f"   [red]{record.name} failed:[/] {escape(first)}",
                                        markup=True, highlight=False)
        if self.debug and error is not None:
            self.progress.console.print(format_traceback(error), markup=False, highlight=False)
