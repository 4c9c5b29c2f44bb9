"""`collect data query SQL`: DuckDB over everything stored (extra `[query]`)."""

from __future__ import annotations

import csv
import json
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

import typer

from ktrdr_collect.cli.cmd_data import DATA_DIR_OPT, data_app, scope
from ktrdr_collect.cli.tables import print_table
from ktrdr_collect.errors import InvalidInputError
from ktrdr_collect.text import clean


def cell(value: Any) -> Any:
    """A value as our files write it: times as ISO 8601 UTC with a Z, the rest as DuckDB gives it."""
    if isinstance(value, datetime):
        text = value.isoformat().replace("+00:00", "Z")
        return text if value.tzinfo else text + "Z"
    if isinstance(value, date):
        return value.isoformat()
    return value


@data_app.command("query")
def query(
    sql: str = typer.Argument(..., help="SQL over the view bars(provider, timeframe, symbol, timestamp, open, high, "
                                        "low, close, volume)."),
    json_: bool = typer.Option(False, "--json", help="A JSON array of objects."),
    csv_: bool = typer.Option(False, "--csv", help="CSV with a header line."),
    data_dir: Path = DATA_DIR_OPT,
) -> int:
    """SQL over every stored series, CSV and Parquet alike (DuckDB; needs the [query] extra)."""
    from ktrdr_collect.storage import query as q

    if json_ and csv_:
        raise InvalidInputError("--json and --csv cannot be combined")
    sc = scope(data_dir, None, None, None)
    try:
        con = q.connect(sc.root, sc.keys())
    finally:
        sc.close()
    try:
        names, rows = q.run(con, sql)
    finally:
        con.close()
    if json_:
        print(json.dumps([dict(zip(names, map(cell, row), strict=True)) for row in rows], indent=2))
    elif csv_:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(names)
        out.writerows([cell(v) for v in row] for row in rows)
    else:
        print_table([n.upper() for n in names], [[clean(str(cell(v))) for v in row] for row in rows])
        print(f"({len(rows):,} row{'' if len(rows) == 1 else 's'})")
    return 0


def register(app: typer.Typer) -> None:
    """The command is on the `data` sub-app (registered with it by cmd_data)."""
