"""Rich tables for humans; never truncated when the output is not a terminal."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable
from typing import Any

from ktrdr_collect.text import clean


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 240)


SAMPLE_ROWS = 200
"""Rows a streamed table sizes its columns by; longer cells further down are cut with an ellipsis."""


def print_stream_table(columns: list[str], rows: Iterable[list[str]], right: tuple[str, ...] = (),
                       empty: str = "", uncut: tuple[str, ...] = ()) -> None:
    """A plain table printed as the rows come, in constant memory: column widths come from the
    header and the first rows (the last column, and those in `uncut`, are never cut: a longer
    cell further down pushes the rest of its row instead)."""
    it = iter(rows)
    head = [[clean(c) for c in row] for row in itertools.islice(it, SAMPLE_ROWS)]
    if not head:
        if empty:
            print(empty)
        return
    widths = [max(len(col), *(len(r[i]) for r in head)) for i, col in enumerate(columns)]
    aligned = {i for i, col in enumerate(columns) if col in right}
    out = sys.stdout
    whole = {i for i, col in enumerate(columns) if col in uncut}
    out.write(_line(columns, widths, aligned, whole) + "\n")
    for row in itertools.chain(head, ([clean(c) for c in row] for row in it)):
        out.write(_line(row, widths, aligned, whole) + "\n")


def _line(cells: list[str], widths: list[int], right: set[int], whole: frozenset[int] | set[int] = frozenset()) -> str:
    parts = []
    last = len(cells) - 1
    for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
        if i == last:
            parts.append(cell)
            continue
        text = cell if len(cell) <= width or i in whole else cell[: width - 1] + "…"
        parts.append(text.rjust(width) if i in right else text.ljust(width))
    return "  ".join(parts).rstrip()


def print_table(columns: list[str], rows: list[list[str]], right: tuple[str, ...] = ()) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", no_wrap=col in ("ID", "SYMBOL"))
    for row in rows:
        table.add_row(*(escape(clean(cell)) for cell in row))  # data, never markup: [yahoo] stays [yahoo]
    console().print(table)
