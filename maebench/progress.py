"""The one progress display: a rich bar with count, rate and ETA on stderr, silent when quiet or not a terminal.

Every long loop (feature extraction, probes, manifest headers, pretraining) goes through `progress_bar`, so they
look alike and `--quiet` / piping behaves the same everywhere. Extra fields (`loss`, ...) are shown after the bar.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")


class _RateColumn(ProgressColumn):
    """Items per second with a unit (rich's own columns show bytes or nothing)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else "", style="progress.data.speed")


def progress_bar(quiet: bool = False, *, unit: str = "items", fields: Iterable[str] = (),
                 transient: bool = False) -> Progress:
    """A rich `Progress` (use as a context manager, then `add_task`); `fields` are extra task fields shown as
    `name value` after the bar (pass them to `add_task` / `update`)."""
    console = Console(stderr=True)
    extra = [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(unit),
        *extra, TimeElapsedColumn(), TimeRemainingColumn(), console=console,
        disable=quiet or not console.is_terminal, transient=transient,
    )


def track(items: list[T], description: str, *, quiet: bool = False, unit: str = "items") -> Iterator[T]:
    """Iterate `items` behind a transient progress bar."""
    with progress_bar(quiet, unit=unit, transient=True) as progress:
        task = progress.add_task(description, total=len(items))
        for item in items:
            yield item
            progress.advance(task)


def download_bar(quiet: bool = False) -> Progress:
    """A rich `Progress` for byte transfers: bytes done / total, rate and ETA (same quiet rules as `progress_bar`)."""
    from rich.progress import DownloadColumn, TransferSpeedColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=console, disable=quiet or not console.is_terminal,
    )
