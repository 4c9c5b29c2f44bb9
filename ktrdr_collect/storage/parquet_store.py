"""OHLCV bars as Parquet datasets, one per (provider, timeframe, symbol), with coverage metadata.

Layout::

    <root>/<provider>/<timeframe>/<FILE>.parquet/                       a folder: the dataset
    <root>/<provider>/<timeframe>/<FILE>.parquet/part-<FIRST>-<LAST>.parquet
    <root>/<provider>/<timeframe>/.ktrdr/<FILE>.parquet.coverage.json
    <root>/<provider>/<timeframe>/.ktrdr/<FILE>.parquet.lock

``FIRST``/``LAST`` are the part's first and last bar times as ``YYYYMMDDTHHMMSSZ``, so name order
is time order. Invariant: parts hold disjoint time ranges, each sorted with unique timestamps, so
reading the folder in name order (what ``pandas.read_parquet`` does) gives sorted unique rows.

A segment that overlaps no part becomes a new part (appends and backfills cost O(segment)); one
that overlaps parts is merged with just those parts. Beyond ``max_parts`` parts, the run of
adjacent parts with the fewest rows is merged into one (log-structured: each bar is rewritten
O(log n) times overall).

Crash safety: a part is written to a ``.``-prefixed temp file (ignored by pyarrow), fsynced and
renamed into place before the parts it replaces are deleted and before coverage is recorded (the
coverage record, lock and write ordering are CsvStore's). A crash leaves at most a temp file and/or
parts whose range lies inside a newer part's; readers skip both and the next write deletes them.

Only imported when pyarrow is installed (``open_store`` checks first).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from ktrdr_collect.storage.csv_store import Bar, CsvStore, fsync_dir
from ktrdr_collect.storage.paths import file_stem

SUFFIX = ".parquet"
PART_PREFIX = "part-"
TMP_SUFFIX = ".tmp"
MAX_PARTS = 32
VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
TIME_UNIT = "ms"  # Parquet has no seconds unit; ms is what any reader (pandas, polars, duckdb) sees
_MS = 1000
SCHEMA = pa.schema(
    [pa.field("timestamp", pa.timestamp(TIME_UNIT, tz="UTC"), nullable=False)]
    + [pa.field(name, pa.float64(), nullable=False) for name in VALUE_COLUMNS]
)


class Part(NamedTuple):
    first: int
    last: int
    path: Path


def ts_name(ts: int) -> str:
    d = datetime.fromtimestamp(ts, UTC)
    return f"{d.year:04d}{d.month:02d}{d.day:02d}T{d.hour:02d}{d.minute:02d}{d.second:02d}Z"


def name_ts(text: str) -> int:
    return int(datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp())


def part_name(first: int, last: int) -> str:
    return f"{PART_PREFIX}{ts_name(first)}-{ts_name(last)}{SUFFIX}"


def parse_part_name(name: str) -> tuple[int, int] | None:
    if not (name.startswith(PART_PREFIX) and name.endswith(SUFFIX)):
        return None
    first, _, last = name[len(PART_PREFIX) : -len(SUFFIX)].partition("-")
    try:
        return name_ts(first), name_ts(last)
    except ValueError:
        return None


def list_parts(folder: Path) -> list[Part]:
    """All part files, by time; a missing folder has none."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    parts = []
    for name in names:
        span = parse_part_name(name)
        if span is not None:
            parts.append(Part(span[0], span[1], folder / name))
    parts.sort()
    return parts


def split_live(parts: list[Part]) -> tuple[list[Part], list[Part]]:
    """``(live, stale)``: a part whose range lies inside another's is left over from a merge that
    crashed before deleting it (the merged part holds all its bars)."""
    live: list[Part] = []
    stale: list[Part] = []
    for part in parts:  # sorted by (first, last): a container comes before or after its contents
        if live and live[-1].first <= part.first and part.last <= live[-1].last:
            stale.append(part)
            continue
        while live and part.first <= live[-1].first and live[-1].last <= part.last:
            stale.append(live.pop())
        live.append(part)
    return live, stale


# --- conversions --------------------------------------------------------------------------------


def bars_to_table(bars: Sequence[Bar]) -> pa.Table:
    columns = list(zip(*bars, strict=True)) if bars else [()] * 6
    arrays = [pa.array([ts * _MS for ts in columns[0]], pa.int64()).cast(SCHEMA.field("timestamp").type)]
    arrays += [pa.array(col, pa.float64()) for col in columns[1:]]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def table_to_bars(table: pa.Table) -> list[Bar]:
    stamps = table.column("timestamp").cast(pa.timestamp(TIME_UNIT)).cast(pa.int64()).to_pylist()
    values = [table.column(name).cast(pa.float64()).to_pylist() for name in VALUE_COLUMNS]
    return [(ms // _MS, *row) for ms, *row in zip(stamps, *values, strict=True)]


def read_part(path: Path) -> list[Bar]:
    return table_to_bars(pq.read_table(path, columns=["timestamp", *VALUE_COLUMNS]))


def merge_bars(old: Sequence[Sequence[Bar]], new: Sequence[Bar]) -> list[Bar]:
    """Bars of ``old`` and ``new`` sorted, one per timestamp; ``new`` wins on equal timestamps."""
    merged: dict[int, Bar] = {}
    for bars in old:
        merged.update((bar[0], bar) for bar in bars)
    merged.update((bar[0], bar) for bar in new)
    return [merged[ts] for ts in sorted(merged)]


def write_part(folder: Path, bars: Sequence[Bar]) -> Path:
    """Write ``bars`` (sorted, unique, not empty) as one part, durably (temp file, fsync, rename)."""
    path = folder / part_name(bars[0][0], bars[-1][0])
    tmp = folder / f".{path.name}{TMP_SUFFIX}"
    try:
        with open(tmp, "wb") as f:
            pq.write_table(bars_to_table(bars), f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(folder)
    return path


def remove_files(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# --- the store ----------------------------------------------------------------------------------


class ParquetStore(CsvStore):
    """Parquet datasets of bars under ``root``; coverage records, locks and the write protocol are
    CsvStore's, only the data file differs."""

    def __init__(self, root: Path, max_parts: int = MAX_PARTS) -> None:
        super().__init__(root)
        if max_parts < 2:
            raise ValueError("max_parts must be at least 2")
        self.max_parts = max_parts

    def __repr__(self) -> str:
        return f"ParquetStore({str(self.root)!r})"

    def path(self, provider: str, timeframe: str, symbol: str) -> Path:
        return self.folder(provider, timeframe) / f"{file_stem(symbol)}{SUFFIX}"

    def meta_path(self, provider: str, timeframe: str, symbol: str, suffix: str) -> Path:
        # ``AAPL.parquet.coverage.json``: distinct from the CSV's ``AAPL.coverage.json``, so that
        # collecting a symbol in both formats into one data dir never shares coverage.
        return super().meta_path(provider, timeframe, symbol, SUFFIX + suffix)

    # reading (without the lock: a concurrent merge may delete a part we listed, so list again)

    def _live_parts(self, provider: str, timeframe: str, symbol: str) -> list[Part]:
        return split_live(list_parts(self.path(provider, timeframe, symbol)))[0]

    def read(
        self, provider: str, timeframe: str, symbol: str, start: int | None = None, end: int | None = None
    ) -> list[Bar]:
        """Stored bars with ``start <= ts < end`` (either bound optional), ascending."""
        for attempt in range(10):
            try:
                return self._read_once(provider, timeframe, symbol, start, end)
            except FileNotFoundError:
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")

    def _read_once(self, provider: str, timeframe: str, symbol: str, start: int | None, end: int | None) -> list[Bar]:
        bars: list[Bar] = []
        for part in self._live_parts(provider, timeframe, symbol):
            if (start is not None and part.last < start) or (end is not None and part.first >= end):
                continue
            bars.extend(
                bar for bar in read_part(part.path)
                if (start is None or bar[0] >= start) and (end is None or bar[0] < end)
            )
        if any(a[0] >= b[0] for a, b in zip(bars, bars[1:], strict=False)):
            return merge_bars([bars], [])  # overlapping parts someone put there by hand
        return bars

    def first_ts(self, provider: str, timeframe: str, symbol: str) -> int | None:
        parts = self._live_parts(provider, timeframe, symbol)
        return parts[0].first if parts else None

    def last_ts(self, provider: str, timeframe: str, symbol: str) -> int | None:
        parts = self._live_parts(provider, timeframe, symbol)
        return max(p.last for p in parts) if parts else None

    # writing (CsvStore.write calls this under the lock)

    def _store_bars(self, path: Path, bars: Sequence[Bar]) -> None:
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path} is a file, expected a Parquet dataset folder")
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            fsync_dir(path.parent)
        remove_files(list(self._leftovers(path)))
        live, stale = split_live(list_parts(path))
        remove_files([p.path for p in stale])
        first, last = bars[0][0], bars[-1][0]
        hit = [p for p in live if p.first <= last and first <= p.last]
        if hit:
            bars = merge_bars([read_part(p.path) for p in hit], bars)
        written = write_part(path, bars)
        remove_files([p.path for p in hit if p.path != written])
        self._compact(path)

    def _replace_bars(self, path: Path, bars: Sequence[Bar]) -> None:
        path.mkdir(parents=True, exist_ok=True)
        old = list_parts(path)
        written = write_part(path, bars) if bars else None
        remove_files([p.path for p in old if p.path != written])

    @staticmethod
    def _leftovers(folder: Path) -> Iterator[Path]:
        """Temp files of writes that crashed (we hold the lock: no write is in progress)."""
        for name in os.listdir(folder):
            if name.startswith(".") and name.endswith(TMP_SUFFIX):
                yield folder / name

    def _compact(self, folder: Path) -> None:
        """While there are more than ``max_parts`` parts, merge the run of ``max_parts // 2 + 1``
        adjacent parts with the fewest rows into one."""
        parts = list_parts(folder)
        while len(parts) > self.max_parts:
            rows = [pq.read_metadata(p.path).num_rows for p in parts]
            width = self.max_parts // 2 + 1
            sums = [sum(rows[i : i + width]) for i in range(len(parts) - width + 1)]
            i = sums.index(min(sums))
            run = parts[i : i + width]
            written = write_part(folder, merge_bars([read_part(p.path) for p in run], []))
            remove_files([p.path for p in run if p.path != written])
            parts = list_parts(folder)
