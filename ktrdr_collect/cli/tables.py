"""Rich tables for humans; never truncated when the output is not a terminal."""

from __future__ import annotations

import sys
from typing import Any

from ktrdr_collect.text import clean


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 240)


def print_table(columns: list[str], rows: list[list[str]], right: tuple[str, ...] = ()) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", no_wrap=col in ("ID", "SYMBOL"))
    for row in rows:
        table.add_row(*(escape(clean(cell)) for cell in row))  # data, never markup: [yahoo] stays [yahoo]
    console().print(table)
