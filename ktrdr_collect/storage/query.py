"""SQL over everything stored, with DuckDB (`collect data query`, extra `[query]`).

One view, `bars(provider, timeframe, symbol, timestamp, open, high, low, close, volume)`, over
the CSV files and the committed Parquet parts alike (`timestamp` a UTC TIMESTAMPTZ). The view is
built from the store's own listing: a file's provider, timeframe and symbol come from where it
is, not from its name's spelling, and a Parquet series is read as its commit record says (never
a part a crashed merge left behind).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ktrdr_collect.errors import InvalidInputError, ProviderUnavailableError
from ktrdr_collect.storage.inventory import SeriesKey, data_path

MISSING = "collect data query needs DuckDB: pip install 'ktrdr-collect[query]'"
COLUMNS = ("provider", "timeframe", "symbol", "timestamp", "open", "high", "low", "close", "volume")
_VALUES = "open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE"


def files_of(root: Path, keys: list[SeriesKey]) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, ...]]]:
    """(csv files, parquet parts), each as (path, provider, timeframe, symbol)."""
    csv: list[tuple[str, str, str, str]] = []
    parquet: list[tuple[str, ...]] = []
    for key in keys:
        path = data_path(root, key)
        if key.format == "csv":
            if path.is_file():
                csv.append((str(path), key.provider, key.timeframe, key.symbol))
            continue
        from ktrdr_collect.storage.parquet_store import committed_parts

        parquet += [(str(part.path), key.provider, key.timeframe, key.symbol) for part in committed_parts(path)]
    return csv, parquet


def connect(root: Path, keys: list[SeriesKey]) -> Any:
    """An in-memory DuckDB connection with the `bars` view over `keys`' data under `root`."""
    try:
        import duckdb
    except ImportError:
        raise ProviderUnavailableError(MISSING) from None
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    csv, parquet = files_of(root, keys)
    con.execute("CREATE TEMP TABLE series_files (path VARCHAR, provider VARCHAR, timeframe VARCHAR, symbol VARCHAR)")
    if csv or parquet:
        con.executemany("INSERT INTO series_files VALUES (?, ?, ?, ?)", [*csv, *parquet])
    selects = []
    if csv:
        selects.append(
            "SELECT f.provider, f.timeframe, f.symbol, CAST(c.timestamp AS TIMESTAMPTZ) AS timestamp, "
            "c.open, c.high, c.low, c.close, c.volume "
            f"FROM read_csv({_list(p for p, *_ in csv)}, header = true, filename = true, "
            f"columns = {{'timestamp': 'VARCHAR', {_csv_values()}}}) c JOIN series_files f ON f.path = c.filename"
        )
    if parquet:
        selects.append(
            "SELECT f.provider, f.timeframe, f.symbol, CAST(p.timestamp AS TIMESTAMPTZ) AS timestamp, "
            "p.open, p.high, p.low, p.close, p.volume "
            f"FROM read_parquet({_list(p for p, *_ in parquet)}, filename = true, union_by_name = true) p "
            "JOIN series_files f ON f.path = p.filename"
        )
    if not selects:
        selects.append(f"SELECT NULL::VARCHAR AS provider, NULL::VARCHAR AS timeframe, NULL::VARCHAR AS symbol, "
                       f"NULL::TIMESTAMPTZ AS timestamp, {', '.join(f'NULL::DOUBLE AS {c}' for c in COLUMNS[4:])} "
                       "WHERE false")
    con.execute("CREATE VIEW bars AS " + " UNION ALL ".join(selects))
    return con


def _list(paths: Any) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _csv_values() -> str:
    return ", ".join(f"'{name}': 'DOUBLE'" for name in ("open", "high", "low", "close", "volume"))


def run(con: Any, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(column names, rows) of `sql`; a statement DuckDB refuses is one clear error."""
    import duckdb

    try:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description or []]
        return names, cursor.fetchall()
    except duckdb.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInputError(f"query failed: {first}") from None
