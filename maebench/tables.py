"""The one way maebench prints a table: whole, wherever it lands (a terminal, a log file, CI, a pipe).

A table's first columns name its rows (upstream, task, probe...): they are never wrapped, folded or cut, so two
rows can always be told apart. The other columns hold values: they may wrap on a narrow terminal. Off a terminal
(no width to respect) a table is printed at the full width it needs, one line per row, without colour codes.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

VALUE_FLOOR = 6  # characters a value column keeps on a narrow terminal ("85.2 ±" / "0.5")


def new_table(title: str, header: Sequence[str], *, names: int = 1, caption: str | None = None) -> Table:
    """A table whose first `names` columns name the rows (left-aligned, kept whole) and whose others hold values
    (right-aligned, folded on a narrow terminal rather than cut)."""
    table = Table(title=title, caption=caption)
    for i, column in enumerate(header):
        if i < names:
            table.add_column(column, justify="left", no_wrap=True)
        else:
            table.add_column(column, justify="right", overflow="fold")
    return table


def print_table(table: Table, console: Console | None = None) -> None:
    """Print `table` whole: off a terminal at its natural width (the caption below it, unwrapped); on a terminal
    narrower than its name columns need, at that width rather than cut (the terminal wraps the long lines)."""
    console = console or Console()
    if not console.is_terminal:
        caption, table.caption = table.caption, None  # a caption wraps to the table's width: print it whole below
        wide = Console(width=100_000, file=console.file, color_system=None)
        width = Measurement.get(wide, wide.options, table).maximum
        plain = Console(width=max(width, 20), file=console.file, color_system=None, highlight=False)
        plain.print(table)
        if caption:
            plain.print(caption, soft_wrap=True, markup=False)
        return
    needed = narrowest_width(table, console)
    if needed > console.width:  # even with every value column folded the names do not fit
        console = Console(width=needed, file=console.file, force_terminal=True, color_system=console.color_system)
    console.print(table)


def narrowest_width(table: Table, console: Console) -> int:
    """The width at which the name columns are whole and each value column keeps VALUE_FLOOR characters (or
    all of its widest cell); rich folds value columns down to there, never a name."""
    options = console.options.update_width(100_000)
    width = len(table.columns) + 1  # the vertical borders
    for column in table.columns:
        cells = [column.header, *column.cells]
        widest = max(Measurement.get(console, options, cell).maximum for cell in cells)
        width += 2 + (widest if column.no_wrap else min(widest, VALUE_FLOOR))  # 2: the cell padding
    return width
