"""Progress bars for the long commands (``verify``, ``backup``, ``restore``, ``archive``,
``export``, ``migrate``, ``compact``): on stderr when it is a terminal, never when it is piped or
with ``--quiet`` (``krepis -q …`` or ``… -q``)."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

__all__: list[str] = []


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().ensure_object(dict)["quiet"] = True


def _quiet_option(fn: Any) -> Any:
    """``-q``/``--quiet`` after the command name too (as before it)."""
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_quiet,
                        help="No progress bar (there is none when stderr is not a terminal).")(fn)


class Bar:
    """What a command reports to: ``bar(done, total)`` moves the bar, ``bar.phase(text)`` names
    a step that reports nothing (a spinner with the time elapsed). Does nothing when silent."""

    def __init__(self, progress: Progress | None, task: TaskID | None, label: str) -> None:
        self._progress, self._task, self._label = progress, task, label

    def __call__(self, done: int, total: int | None) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done, total=total)

    def phase(self, label: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=label, completed=0, total=None)

    def then(self, label: str) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` callback that moves the bar, then — once done reaches
        total — shows ``label`` (the step after, which reports nothing)."""
        def report(done: int, total: int) -> None:
            self(done, total)
            if done >= total:
                self.phase(label)
        return report


def _silent(ctx: click.Context) -> bool:
    obj = ctx.find_root().obj or {}
    return bool(obj.get("quiet")) or not sys.stderr.isatty()


@contextmanager
def progress_bar(ctx: click.Context, label: str, *, unless: bool = False) -> Iterator[Bar]:
    """A bar on stderr while the block runs — when stderr is a terminal, ``--quiet`` was not
    given and not ``unless`` (e.g. the command's output goes to the same terminal). It is
    erased when the block ends: what the command prints afterwards stands alone."""
    if unless or _silent(ctx):
        yield Bar(None, None, label)
        return
    console = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        yield Bar(progress, progress.add_task(label, total=None), label)
