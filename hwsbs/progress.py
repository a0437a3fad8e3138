"""Rich progress bars for the training phases (or silence, for tests and Optuna trials)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["PhaseProgress", "console", "progress_bar"]

#: Everything hwsbs prints for people goes to stderr, so --json output on stdout stays clean.
console = Console(stderr=True)


class PhaseProgress(AbstractContextManager):
    """One bar per phase; ``update`` shows loss, accuracy and the current cost."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> PhaseProgress:
        if self.enabled:
            self._progress = progress_bar("{task.description:<10}", "status", transient=False)
            self._progress.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None

    def start(self, phase: str, total_steps: int, completed: int = 0) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(phase, total=total_steps, completed=completed, status="")

    def update(self, advance: int = 1, **status: float | str) -> None:
        if self._progress is None or self._task is None:
            return
        parts = []
        for key, value in status.items():
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        self._progress.update(self._task, advance=advance, status="  ".join(parts))

    def log(self, message: str) -> None:
        if self.enabled:
            console.print(message)


def progress_bar(title: str, field: str | None = None, remaining: bool = True, **options: Any) -> Progress:
    """A rich bar in hwsbs's layout, on :data:`console`.

    Args:
        title: the bold label (rich markup of the task, e.g. ``{task.description}``, allowed).
        field: a task field shown after the counts (``add_task(..., field=...)``), if any.
        remaining: show the estimated time left after the elapsed time.
        **options: for :class:`rich.progress.Progress` (``disable``, ``transient``).
    """
    columns: list[ProgressColumn] = [TextColumn(f"[bold]{title}"), BarColumn(bar_width=24), MofNCompleteColumn()]
    if field is not None:
        columns.append(TextColumn(f"{{task.fields[{field}]}}"))
    columns.append(TimeElapsedColumn())
    if remaining:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console, **options)
