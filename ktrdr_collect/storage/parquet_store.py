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
that overlaps parts is merged with just those parts. Beyond ``max_parts`` parts below
``full_rows`` rows, a run of adjacent such parts is merged into one (``choose_run``: appended
bars are rewritten about twice; full parts never), streamed as Arrow columns. Bars move as Arrow
tables throughout; Python tuples only at the Store interface (``read``), and a write takes tuples
or storage.columns' numpy columns alike.

Crash safety: a part is written to a hidden temp file (``.``-prefixed: pyarrow ignores it) and
fsynced first. A new part that replaces none is then renamed into place. A merge, which replaces
parts, is a commit: the record ``_commit.json`` (ignored by pyarrow too) naming the new part, its
temp file and the parts it replaces is written durably; then the old parts are hidden
(``.<name>.superseded``), the new part renamed in, the hidden parts and the record deleted. A
crash before the record leaves the old parts; after it, the next writer (or the next job's look
at the coverage) completes the commit, and our readers see the new part meanwhile. pyarrow never
sees an old part and the new one together. The coverage record, lock and write ordering are
storage.series' (shared with CsvStore, a sibling: neither knows the other).

Only imported when pyarrow is installed (``open_store`` checks first).
"""

from __future__ import annotations

import calendar
import contextlib
import functools
import json
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ktrdr_collect import files
from ktrdr_collect.storage import series
from ktrdr_collect.storage.gaps import Interval, merge_intervals
from ktrdr_collect.storage.series import Bar

SUFFIX = ".parquet"
PART_PREFIX = "part-"
COMMIT_FILE = "_commit.json"
SUPERSEDED_SUFFIX = ".superseded"
MAX_PARTS = 32
FULL_ROWS = 1 << 18
"""A part of this many rows (half a year of 1m bars, ~5 MB) is full: compaction leaves it alone."""
VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
TIME_UNIT = "ns"  # UTC timestamp[ns]: what pandas, polars and DuckDB read without a conversion
_PER_S = 1_000_000_000
LABEL = pa.dictionary(pa.int8(), pa.string())
LABEL_COLUMNS = ("provider", "timeframe", "symbol")
"""Every part names its series (dictionary-encoded: a few bytes a part), so any engine reading a
folder of parts, or all of them, can tell the series apart without our folder layout."""
SCHEMA = pa.schema(
    [pa.field(name, LABEL, nullable=False) for name in LABEL_COLUMNS]
    + [pa.field("timestamp", pa.timestamp(TIME_UNIT, tz="UTC"), nullable=False)]
    + [pa.field(name, pa.float64(), nullable=False) for name in VALUE_COLUMNS]
)
"""Parts written before these columns existed (timestamp[ms], no labels) still read."""


class Part(NamedTuple):
    first: int
    last: int
    path: Path


def ts_name(ts: int) -> str:
    d = datetime.fromtimestamp(ts, UTC)
    return f"{d.year:04d}{d.month:02d}{d.day:02d}T{d.hour:02d}{d.minute:02d}{d.second:02d}Z"


def name_ts(text: str) -> int:
    """``YYYYMMDDTHHMMSSZ`` -> epoch seconds (ValueError if it is not one): parsed by hand, as a
    listing parses every part's name and strptime costs ~10 us a name."""
    if len(text) != 16 or text[8] != "T" or text[15] != "Z" or not (text[:8] + text[9:15]).isdigit() \
            or not text.isascii():
        raise ValueError(f"not a part time: {text!r}")
    d = datetime(int(text[:4]), int(text[4:6]), int(text[6:8]), int(text[9:11]), int(text[11:13]),
                 int(text[13:15]), tzinfo=UTC)
    return calendar.timegm(d.utctimetuple())


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


def list_parts(folder: Path, names: Sequence[str] | None = None) -> list[Part]:
    """All part files (among ``names``, else the folder's), by time; a missing folder has none."""
    if names is None:
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
    parts = [part for part in (part_in(folder, name) for name in names) if part is not None]
    parts.sort()
    return parts


@functools.lru_cache(maxsize=4096)
def part_in(folder: Path, name: str) -> Part | None:
    """The part a file name in ``folder`` names, or None (remembered: every write lists the parts
    a few times, and a name's meaning never changes)."""
    span = parse_part_name(name)
    return None if span is None else Part(span[0], span[1], folder / name)


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


class Commit(NamedTuple):
    """A merge in progress: ``old`` parts are replaced by ``new``, which waits in ``tmp`` until
    it is renamed into place (``new``/``tmp`` are None when the old parts are just removed)."""

    new: str | None
    tmp: str | None
    old: tuple[str, ...]

    def to_json(self) -> bytes:
        return json.dumps({"new": self.new, "tmp": self.tmp, "old": list(self.old)}).encode()

    def revealed(self, folder: Path) -> bool:
        """The new part is in place (or there is none): the old parts are all hidden."""
        return self.tmp is None or not os.path.lexists(folder / self.tmp)


def parse_commit(raw: bytes) -> Commit | None:
    """A commit record, or None if it is not one we wrote (names are checked: it names files to
    rename and delete, so nothing outside the dataset folder can be named)."""
    try:
        doc = json.loads(raw)
        new, tmp, old = doc["new"], doc["tmp"], doc["old"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    if not isinstance(old, list) or not all(isinstance(n, str) and parse_part_name(n) for n in old):
        return None
    if (new is None) != (tmp is None):
        return None
    if new is not None and not (isinstance(new, str) and parse_part_name(new) and isinstance(tmp, str)
                                and files.is_temp_name(tmp) and "/" not in tmp and "\\" not in tmp):
        return None
    return Commit(new, tmp, tuple(old))


def read_commit(folder: Path) -> Commit | None:
    try:
        return parse_commit((folder / COMMIT_FILE).read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return None


def hidden_name(name: str) -> str:
    """Where a replaced part waits, invisible to pyarrow, until the commit deletes it."""
    return f".{name}{SUPERSEDED_SUFFIX}"


def committed_view(folder: Path, parts: list[Part], commit: Commit | None) -> list[Part]:
    """The parts as committed: during a commit (or after a crash inside one) its old parts are
    replaced by its new part, wherever that is yet."""
    if commit is None:
        return parts
    revealed = commit.revealed(folder)
    gone = set(commit.old) - ({commit.new} if revealed else set())
    view = [p for p in parts if p.path.name not in gone]
    if not revealed and commit.new is not None and commit.tmp is not None:
        first, last = parse_part_name(commit.new)  # type: ignore[misc]
        view.append(Part(first, last, folder / commit.tmp))
    return sorted(view)


def committed_parts(folder: Path) -> list[Part]:
    """What a reader without the lock sees: the listing and the commit record taken together."""
    for _ in range(10):
        before = read_commit(folder)
        parts = list_parts(folder)
        after = read_commit(folder)
        if before == after:
            break
    return committed_view(folder, parts, after)


# --- conversions: bars move as Arrow columns; tuples only at the Store interface ---------------

TS_TYPE = pa.timestamp(TIME_UNIT, tz="UTC")
DATA_COLUMNS = ["timestamp", *VALUE_COLUMNS]
CORE = pa.schema([SCHEMA.field(name) for name in DATA_COLUMNS])
"""A part's bars without its labels: what merges, reads and compactions move around."""
WRITE_OPTIONS: dict[str, object] = {
    "compression": {**{name: "none" for name in LABEL_COLUMNS}, **{name: "zstd" for name in DATA_COLUMNS}},
    "use_dictionary": list(LABEL_COLUMNS),  # the labels; prices and volumes encode plainly (smaller, faster)
    "write_statistics": ["timestamp"],  # min/max time per row group: what readers filter on
}
"""How every part is encoded (the schema is SCHEMA whatever these say)."""
SMALL_ROWS = 1 << 13
"""A part of fewer rows is written uncompressed: zstd's set-up per column costs more than the
~30 KB it would save on a 1000-bar segment, and compaction soon rewrites such parts, compressed."""
BATCH_ROWS = 1 << 17
"""Rows a compaction holds in memory at a time, and the row groups it writes."""
_MAX_S = (2**63 - 1) // _PER_S
"""Bar times beyond this many seconds from 1970 do not fit timestamp[ns]."""


def write_options(rows: int) -> dict[str, object]:
    return WRITE_OPTIONS if rows >= SMALL_ROWS else {**WRITE_OPTIONS, "compression": "none"}


def label_of(folder: Path) -> tuple[str, str, str]:
    """(provider, timeframe, symbol) of a series from its dataset folder
    (`<root>/<provider>/<timeframe>/<FILE>.parquet`)."""
    from ktrdr_collect.storage.paths import symbol_of_stem

    return folder.parent.parent.name, folder.parent.name, symbol_of_stem(folder.name.removesuffix(SUFFIX))


def core_table(bars: Sequence[Bar]) -> pa.Table:
    """Bars (a list of tuples, or columns with numpy ``ts``/``values`` as storage.columns makes)
    as an Arrow table of CORE; no Python object per value on the columnar path."""
    ts, values = getattr(bars, "ts", None), getattr(bars, "values", None)
    if isinstance(ts, np.ndarray) and isinstance(values, np.ndarray):
        stamps = ts.astype(np.int64, copy=False)
        cols = [np.ascontiguousarray(values[:, i], dtype=np.float64) for i in range(len(VALUE_COLUMNS))]
    else:
        rows = bars if isinstance(bars, list | tuple) else list(bars)
        if rows:
            first, *rest = zip(*rows, strict=True)
            stamps = np.array(first, np.int64)
            cols = [np.array(col, np.float64) for col in rest]
        else:
            stamps, cols = np.empty(0, np.int64), [np.empty(0, np.float64)] * len(VALUE_COLUMNS)
    if len(cols) != len(VALUE_COLUMNS):
        raise ValueError(f"a bar has {len(cols) + 1} fields, expected {len(DATA_COLUMNS)}")
    if len(stamps) and (stamps.min() < -_MAX_S or stamps.max() > _MAX_S):
        raise OverflowError("a bar time is out of the range of timestamp[ns]")
    arrays = [pa.array(stamps * _PER_S, pa.int64()).view(TS_TYPE), *(pa.array(col, pa.float64()) for col in cols)]
    return pa.Table.from_arrays(arrays, schema=CORE)


def normalized(table: pa.Table) -> pa.Table:
    """A part's bar columns as CORE, whatever the part was written with (timestamp[ms] without
    labels before they existed)."""
    columns = []
    for field in CORE:
        column = table.column(field.name)
        if column.type != field.type:
            if field.name == "timestamp":  # to ns, then the zone named
                column = column.cast(pa.timestamp(TIME_UNIT)).cast(pa.int64()).cast(TS_TYPE)
            else:
                column = column.cast(field.type)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=CORE)


def labelled(core: pa.Table, label: tuple[str, str, str]) -> pa.Table:
    """A CORE table with its series' label columns in front (SCHEMA)."""
    zeros = label_indices(core.num_rows)
    labels = [pa.DictionaryArray.from_arrays(zeros, label_dictionary(text), safe=False) for text in label]
    return pa.Table.from_arrays([*labels, *core.columns], schema=SCHEMA)


@functools.lru_cache(maxsize=8)
def label_indices(rows: int) -> pa.Array:
    return pa.array(np.zeros(rows, np.int8))


@functools.lru_cache(maxsize=256)
def label_dictionary(text: str) -> pa.Array:
    return pa.array([text], pa.string())


def stamps_ns(table: pa.Table) -> np.ndarray:
    """The timestamp column as int64 nanoseconds (one numpy array)."""
    column = table.column("timestamp")
    if not column.num_chunks:
        return np.empty(0, np.int64)
    return column.to_numpy().view(np.int64)


def ascending(ts: np.ndarray) -> bool:
    return len(ts) < 2 or bool((ts[1:] > ts[:-1]).all())


def bars_to_table(bars: Sequence[Bar], label: tuple[str, str, str] = ("", "", "")) -> pa.Table:
    return labelled(core_table(bars), label)


def table_to_bars(table: pa.Table) -> list[Bar]:
    core = normalized(table)
    stamps = (stamps_ns(core) // _PER_S).tolist()
    values = [core.column(name).to_numpy().tolist() for name in VALUE_COLUMNS]
    return list(zip(stamps, *values, strict=True))


def read_core(path: Path) -> pa.Table:
    """A part's bars (one thread: pyarrow's pool costs more CPU than it saves on parts this size)."""
    with pq.ParquetFile(path, pre_buffer=False) as f:
        return normalized(f.read(columns=DATA_COLUMNS, use_threads=False))


def read_part(path: Path) -> list[Bar]:
    return table_to_bars(read_core(path))


def merge_tables(tables: Sequence[pa.Table]) -> pa.Table:
    """CORE tables as one, sorted, one row per timestamp; a later table wins on equal timestamps.
    Tables already in order (each ascending, each after the one before) are just concatenated."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return CORE.empty_table()
    stamps = [stamps_ns(t) for t in tables]
    if all(ascending(ts) for ts in stamps) and all(a[-1] < b[0] for a, b in zip(stamps, stamps[1:], strict=False)):
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    ts = np.concatenate(stamps)
    source = np.repeat(np.arange(len(tables)), [len(t) for t in stamps])
    order = np.lexsort((-source, ts))  # by time, the latest table first among equal times
    ts = ts[order]
    keep = order[np.append(True, ts[1:] != ts[:-1])]
    return pa.concat_tables(tables).take(pa.array(keep))


def changed_count(stored: pa.Table, new: pa.Table) -> int:
    """How many rows of ``new`` are not already in ``stored`` (sorted, unique) exactly so."""
    old_ts, new_ts = stamps_ns(stored), stamps_ns(new)
    if not len(old_ts):
        return new.num_rows
    at = np.minimum(np.searchsorted(old_ts, new_ts), len(old_ts) - 1)
    same = old_ts[at] == new_ts
    for name in VALUE_COLUMNS:
        same &= stored.column(name).to_numpy()[at] == new.column(name).to_numpy()
    return int(new.num_rows - np.count_nonzero(same))


def merge_bars(old: Sequence[Sequence[Bar]], new: Sequence[Bar]) -> list[Bar]:
    """Bars of ``old`` and ``new`` sorted, one per timestamp; ``new`` wins on equal timestamps."""
    return table_to_bars(merge_tables([core_table(bars) for bars in (*old, new)]))


def encode_part(core: pa.Table, label: tuple[str, str, str]) -> pa.Buffer:
    """A CORE table as the bytes of one Parquet file, labelled with its series."""
    sink = pa.BufferOutputStream()
    pq.write_table(labelled(core, label), sink, **write_options(core.num_rows))  # type: ignore[arg-type]
    return sink.getvalue()


def part_bytes(bars: Sequence[Bar], label: tuple[str, str, str] = ("", "", "")) -> bytes:
    """``bars`` as the bytes of one Parquet file, labelled with their series."""
    return encode_part(core_table(bars), label).to_pybytes()


def remove_files(paths: Sequence[Path]) -> None:
    for path in paths:
        files.remove_quietly(path)


def hide(folder: Path, names: Sequence[str]) -> None:
    """Rename visible parts to their hidden names (those already hidden are skipped)."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.rename(folder / name, folder / hidden_name(name))


def finish_commit(folder: Path, commit: Commit) -> None:
    """Complete a commit (again, after a crash: every step can be repeated): hide the old parts,
    rename the new one in, then delete the hidden parts and the record."""
    if not commit.revealed(folder) or commit.tmp is None:
        hide(folder, commit.old)
        if commit.tmp is not None and commit.new is not None:
            os.replace(folder / commit.tmp, folder / commit.new)
        files.fsync_dir(folder)
    remove_files([folder / hidden_name(name) for name in commit.old])
    files.remove_quietly(folder / COMMIT_FILE)


# --- the store ----------------------------------------------------------------------------------


class ParquetStore:
    """Parquet datasets of bars under ``root`` (storage.store.Store); the coverage record, lock
    and write order are storage.series' (the same as CsvStore's, in files of their own)."""

    format = "parquet"
    suffix = SUFFIX
    tag = SUFFIX
    """``AAPL.parquet.coverage.json``: distinct from the CSV's ``AAPL.coverage.json``, so that
    collecting a symbol in both formats into one data dir never shares coverage."""

    def __init__(self, root: Path, max_parts: int = MAX_PARTS, full_rows: int = FULL_ROWS) -> None:
        if max_parts < 2:
            raise ValueError("max_parts must be at least 2")
        if full_rows < 1:
            raise ValueError("full_rows must be at least 1")
        self.root = Path(root)
        self.max_parts = max_parts
        self.full_rows = full_rows
        self._writing = threading.local()

    def __repr__(self) -> str:
        return f"ParquetStore({str(self.root)!r})"

    # paths

    def folder(self, provider: str, timeframe: str) -> Path:
        return series.series_folder(self.root, provider, timeframe)

    def path(self, provider: str, timeframe: str, symbol: str) -> Path:
        return series.data_path(self.root, provider, timeframe, symbol, self.suffix)

    def coverage_path(self, provider: str, timeframe: str, symbol: str) -> Path:
        return series.meta_path(self.root, provider, timeframe, symbol, self.tag + series.COVERAGE_SUFFIX)

    def lock_path(self, provider: str, timeframe: str, symbol: str) -> Path:
        return series.meta_path(self.root, provider, timeframe, symbol, self.tag + series.LOCK_SUFFIX)

    def lock(self, provider: str, timeframe: str, symbol: str) -> contextlib.AbstractContextManager[None]:
        """Exclusive, blocking lock for one dataset (threads and processes; re-entrant per thread)."""
        return series.held(self.lock_path(provider, timeframe, symbol), self.root)

    # reading (without the lock: a concurrent merge may delete a part we listed, so list again)

    def _live_parts(self, provider: str, timeframe: str, symbol: str) -> list[Part]:
        return live_parts(self.path(provider, timeframe, symbol))

    def read(
        self, provider: str, timeframe: str, symbol: str, start: int | None = None, end: int | None = None
    ) -> list[Bar]:
        """Stored bars with ``start <= ts < end`` (either bound optional), ascending."""
        folder = self.path(provider, timeframe, symbol)
        for attempt in range(10):
            try:
                return read_dataset(folder, start, end)
            except FileNotFoundError:
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")

    def first_ts(self, provider: str, timeframe: str, symbol: str) -> int | None:
        parts = self._live_parts(provider, timeframe, symbol)
        return parts[0].first if parts else None

    def last_ts(self, provider: str, timeframe: str, symbol: str) -> int | None:
        parts = self._live_parts(provider, timeframe, symbol)
        return max(p.last for p in parts) if parts else None

    def coverage(self, provider: str, timeframe: str, symbol: str) -> list[Interval]:
        """Recorded covered ranges (derived from the data if there is no record); first, what a
        crashed write left in the dataset is tidied up (every job looks at the coverage of each of
        its series, so the next one repairs it)."""
        if not getattr(self._writing, "bars", False):  # (a write with bars recovers under its lock)
            self._tidy(provider, timeframe, symbol)
        return series.coverage_of(self, (provider, timeframe, symbol))

    def count(self, provider: str, timeframe: str, symbol: str, ranges: Sequence[Interval]) -> int:
        """Stored rows with a timestamp inside any of ``ranges``: a part wholly inside one counts
        from its footer, the others from their timestamp column (no bar is made)."""
        merged = merge_intervals(list(ranges))
        folder = self.path(provider, timeframe, symbol)
        for attempt in range(10):
            try:
                return count_rows(folder, merged) if merged else 0
            except FileNotFoundError:  # a concurrent merge replaced a part we listed: list again
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")

    def row_count(self, provider: str, timeframe: str, symbol: str) -> int:
        """Stored rows, from the parts' metadata (no data read)."""
        for attempt in range(10):
            try:
                return sum(part_rows(p.path) for p in self._live_parts(provider, timeframe, symbol))
            except FileNotFoundError:
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")

    def size(self, provider: str, timeframe: str, symbol: str) -> int:
        total = 0
        for part in self._live_parts(provider, timeframe, symbol):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(part.path).st_size
        return total

    # writing

    def write(self, provider: str, timeframe: str, symbol: str, bars: Sequence[Bar], covered: Interval) -> int:
        """Store ``bars`` (ascending, inside ``covered``) durably, then record ``covered`` as
        fetched; returns how many rows the dataset gained or changed."""
        folder = self.path(provider, timeframe, symbol)
        self._writing.bars = len(bars) > 0
        try:
            return series.write_series(self, (provider, timeframe, symbol), bars, covered,
                                       lambda new, _known: (self._store_bars(folder, new), None))
        finally:
            self._writing.bars = False

    def replace(self, provider: str, timeframe: str, symbol: str, bars: Sequence[Bar],
                ranges: Sequence[Interval]) -> None:
        """Replace the whole series and its fetched ranges (record emptied first)."""
        folder = self.path(provider, timeframe, symbol)
        series.replace_series(self, (provider, timeframe, symbol), bars, ranges,
                              lambda new: self._replace_bars(folder, new))

    def set_aside(self, provider: str, timeframe: str, symbol: str, tag: str) -> Path | None:
        """Move the dataset out of the way (``<name>.<tag>``) and forget its fetched ranges."""
        return series.set_aside_series(self, (provider, timeframe, symbol), tag)

    def erase(self, provider: str, timeframe: str, symbol: str, start: int | None = None,
              end: int | None = None) -> int:
        """Remove the bars in ``[start, end)`` (every bar without bounds) and their fetched ranges;
        returns how many bars went (storage.series.erase_series: record first)."""
        folder = self.path(provider, timeframe, symbol)
        return series.erase_series(self, (provider, timeframe, symbol), start, end,
                                   lambda lo, hi: self._erase_bars(folder, lo, hi))

    def _save_coverage(self, provider: str, timeframe: str, symbol: str, ranges: Sequence[Interval],
                       durable: bool = False) -> None:
        series.save_coverage_file(self.coverage_path(provider, timeframe, symbol), ranges, durable)

    # the dataset operations (called under the lock)

    def _store_bars(self, path: Path, bars: Sequence[Bar]) -> int:
        parts = self._open_dataset(path)
        new = core_table(bars)
        first, last = bars[0][0], bars[-1][0]
        hit = [p for p in parts if p.first <= last and first <= p.last]
        written = new.num_rows
        if hit:  # merged with just the parts it overlaps; the new values win
            stored = merge_tables([read_core_cached(p.path) for p in hit])
            written = changed_count(stored, new)
            new = merge_tables([stored, new])
        made = commit_parts(path, new, hit)
        parts = sorted([p for p in parts if p not in hit] + ([made] if made else []))
        compact(path, self.max_parts, self.full_rows, parts)
        return written

    def _replace_bars(self, path: Path, bars: Sequence[Bar]) -> None:
        self._open_dataset(path)
        commit_parts(path, core_table(bars), list_parts(path))

    def _erase_bars(self, path: Path, start: int | None, end: int | None) -> int:
        if not os.path.lexists(path):
            return 0
        self._open_dataset(path)
        lo, hi = series.erase_window(start, end)
        hit = [p for p in list_parts(path) if p.first < hi and lo <= p.last]
        tables = [read_core(p.path) for p in hit]
        kept = [t.filter(pa.array(~in_window(stamps_ns(t), lo, hi))) for t in tables]
        if hit:
            commit_parts(path, merge_tables(kept), hit)
        if start is None and end is None:  # the whole series: the empty dataset folder goes too
            with contextlib.suppress(OSError):
                os.rmdir(path)
                files.fsync_dir(path.parent)
        return sum(t.num_rows for t in tables) - sum(t.num_rows for t in kept)

    def _open_dataset(self, path: Path) -> list[Part]:
        """Make the dataset folder (never through a link) and finish what a crash left in it;
        returns its parts."""
        try:
            real_folder = stat.S_ISDIR(os.lstat(path).st_mode)
        except FileNotFoundError:
            real_folder = False
        if not real_folder:  # (an existing one: the lock has just checked the folders above it)
            if os.path.isfile(path) and not files.is_symlink(path):
                raise FileExistsError(f"{path} is a file, expected a Parquet dataset folder")
            created = not os.path.lexists(path)
            files.make_dirs(path, files.DATA_DIR_MODE, root=self.root)
            if created:
                files.fsync_dir(path.parent)
        return recover(path)

    def _tidy(self, provider: str, timeframe: str, symbol: str) -> None:
        """Recover a dataset that needs it, if we may (a read-only data dir is left as it is)."""
        folder = self.path(provider, timeframe, symbol)
        if not needs_recovery(folder):
            return
        with contextlib.suppress(OSError), self.lock(provider, timeframe, symbol):
            if os.path.isdir(folder) and not files.is_symlink(folder):
                recover(folder)


# --- dataset operations -------------------------------------------------------------------------


def live_parts(folder: Path) -> list[Part]:
    return split_live(committed_parts(folder))[0]


def summarize(folder: Path) -> tuple[int | None, int | None, int, int]:
    """``(first_ts, last_ts, rows, size)`` of a dataset from part names and footers (no data read)."""
    for attempt in range(10):
        try:
            parts = live_parts(folder)
            rows = sum(part_rows(p.path) for p in parts)
            size = sum(os.stat(p.path).st_size for p in parts)
            break
        except FileNotFoundError:  # a concurrent merge replaced a part we listed: list again
            if attempt == 9:
                raise
    if not parts:
        return None, None, 0, 0
    return parts[0].first, max(p.last for p in parts), rows, size


def raw_bars(folder: Path) -> list[Bar]:
    """Every stored bar as the parts hold them, in part order (unsorted, duplicates kept)."""
    return [bar for part in live_parts(folder) for bar in read_part(part.path)]


def read_stamps(path: Path) -> np.ndarray:
    """A part's timestamps (int64 ns), read alone."""
    with pq.ParquetFile(path, pre_buffer=False) as f:
        return stamps_ns(normalized_stamps(f.read(columns=["timestamp"], use_threads=False)))


def normalized_stamps(table: pa.Table) -> pa.Table:
    column = table.column("timestamp")
    if column.type != TS_TYPE:
        column = column.cast(pa.timestamp(TIME_UNIT)).cast(pa.int64()).cast(TS_TYPE)
    return pa.table({"timestamp": column})


def count_rows(folder: Path, ranges: list[Interval]) -> int:
    """Rows of the dataset with a timestamp in one of ``ranges`` (merged, ascending)."""
    parts = live_parts(folder)
    lows = np.array([lo for lo, _ in ranges], np.int64) * _PER_S
    highs = np.array([hi for _, hi in ranges], np.int64) * _PER_S
    disjoint = all(a.last < b.first for a, b in zip(parts, parts[1:], strict=False))
    total = 0
    stamps = []
    for part in parts:
        hit = [(lo, hi) for lo, hi in ranges if lo <= part.last and part.first < hi]
        if not hit:
            continue
        if disjoint and len(hit) == 1 and hit[0][0] <= part.first and part.last < hit[0][1]:
            total += part_rows(part.path)  # wholly inside: the footer says how many
            continue
        stamps.append(read_stamps(part.path))
    if not stamps:
        return total
    ts = np.concatenate(stamps)
    if not disjoint or not ascending(ts):  # parts someone put there overlapping: each time once
        ts = np.unique(ts)
    return total + int((np.searchsorted(ts, highs) - np.searchsorted(ts, lows)).sum())


def in_window(ts_ns: np.ndarray, start: int | None, end: int | None) -> np.ndarray:
    """Which of ``ts_ns`` (nanoseconds) lie in ``[start, end)`` (seconds; a missing bound is open)."""
    keep = np.ones(len(ts_ns), bool)
    if start is not None:
        keep &= ts_ns >= start * _PER_S
    if end is not None:
        keep &= ts_ns < end * _PER_S
    return keep


def read_dataset(folder: Path, start: int | None, end: int | None) -> list[Bar]:
    tables = []
    for part in live_parts(folder):
        if (start is not None and part.last < start) or (end is not None and part.first >= end):
            continue
        table = read_core(part.path)
        keep = in_window(stamps_ns(table), start, end)
        tables.append(table if keep.all() else table.filter(pa.array(keep)))
    return table_to_bars(merge_tables(tables))  # parts someone put there overlapping are sorted out


def part_span(core: pa.Table) -> tuple[int, int]:
    """First and last bar time of a non-empty sorted CORE table, in seconds."""
    ts = core.column("timestamp")
    return ts[0].value // _PER_S, ts[-1].value // _PER_S


def commit_parts(folder: Path, core: pa.Table, old: Sequence[Part]) -> Part | None:
    """Replace the parts ``old`` by one part of ``core``'s bars (none if empty; see the module
    doc); returns the new part."""
    new = tmp = None
    if core.num_rows:
        new = part_name(*part_span(core))
        tmp = files.write_temp(folder / new, memoryview(encode_part(core, label_of(folder))),
                               mode=files.DATA_FILE_MODE, durable=True)
    commit_temp(folder, new, tmp, old)
    if new is None:
        return None
    recent.put(folder / new, core)
    remember_rows(folder / new, core.num_rows)
    return part_in(folder, new)


def commit_temp(folder: Path, new: str | None, tmp: Path | None, old: Sequence[Part]) -> None:
    """Put the written part ``tmp`` in place as ``new``, replacing the parts ``old``."""
    if not old:  # nothing replaced: one rename is the commit
        if tmp is not None and new is not None:
            reveal(tmp, folder / new)
        return
    commit = Commit(new, tmp.name if tmp else None, tuple(p.path.name for p in old))
    try:
        files.atomic_write(folder / COMMIT_FILE, commit.to_json(), mode=files.DATA_FILE_MODE, durable=True)
    except BaseException:
        if tmp is not None:
            files.remove_quietly(tmp)
        raise
    finish_commit(folder, commit)


def reveal(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except BaseException:
        files.remove_quietly(tmp)
        raise
    files.fsync_dir(path.parent)


def recover(folder: Path) -> list[Part]:
    """Under the lock (no write is in progress): finish a crashed commit, then delete temp files,
    hidden parts and parts lying inside another (left by versions before the commit record)."""
    names = os.listdir(folder)
    if COMMIT_FILE in names:
        raw = None
        with contextlib.suppress(FileNotFoundError):
            raw = (folder / COMMIT_FILE).read_bytes()
        if raw is not None:
            commit = parse_commit(raw)
            if commit is not None:
                finish_commit(folder, commit)
            else:  # not ours to follow: put hidden parts back, the checks below sort them out
                restore_hidden(folder)
                files.remove_quietly(folder / COMMIT_FILE)
        names = os.listdir(folder)
    remove_files([folder / name for name in names if is_leftover(name)])
    live, stale = split_live(list_parts(folder, names))
    remove_files([p.path for p in stale])
    return live


def compact(folder: Path, max_parts: int, full_rows: int = FULL_ROWS, parts: list[Part] | None = None) -> None:
    """While more than ``max_parts`` parts hold fewer than ``full_rows`` rows, merge the run of
    adjacent parts ``choose_run`` picks. Parts never overlap, so a merge is a concatenation: the
    parts are streamed into the new one a batch at a time, as Arrow columns."""
    parts = list_parts(folder) if parts is None else parts
    while len(parts) > max_parts:
        run = choose_run([rows_hint(p.path) for p in parts], max_parts, full_rows)
        if run is None:
            return
        chosen = parts[run[0] : run[1]]
        if not concat_parts(folder, chosen):  # parts out of order (put there by hand): sort them
            commit_parts(folder, merge_tables([read_core(p.path) for p in chosen]), chosen)
        parts = list_parts(folder)


SIMILAR = 2
"""Parts within this factor of each other's rows are of one size: merged together first."""
BALANCE = 4
"""Otherwise a run at least this many times bigger than its biggest part (every row it rewrites
lands in a part BALANCE times bigger)."""


def choose_run(rows: Sequence[int], max_parts: int, full_rows: int) -> tuple[int, int] | None:
    """``(i, j)``: merge ``parts[i:j]``, or None when nothing needs (or can) be merged.

    Only parts below ``full_rows`` rows are merged: a full part is never rewritten by compaction,
    so what a write costs does not grow with the series. A run is 2 to ``max_parts // 2 + 1``
    adjacent such parts. First choice, the longest run of parts of one size (within SIMILAR) if it
    has at least 8 parts (or the most a run can have): appends then merge 17 segments' parts into
    one, 17 of those into a full part, so each bar is rewritten about twice. Else, of the runs
    BALANCE times bigger than their biggest part, the one rewriting the fewest rows per part it
    removes; else (segments landing in any order) the cheapest run at all."""
    if sum(1 for n in rows if n < full_rows) <= max_parts:
        return None
    width = max_parts // 2 + 1
    similar: tuple[int, int, int] | None = None  # (-length, rows, i)
    balanced: tuple[float, int, int] | None = None  # (rows per part removed, i, j)
    cheapest: tuple[float, int, int] | None = None
    for i in range(len(rows)):
        total = top = 0
        bottom = full_rows
        for j in range(i, min(i + width, len(rows))):
            if rows[j] >= full_rows:
                break
            total += rows[j]
            top, bottom = max(top, rows[j]), min(bottom, rows[j])
            if j == i:
                continue
            cost = (total / (j - i), i, j + 1)
            cheapest = min(cheapest or cost, cost)
            if total >= BALANCE * top:
                balanced = min(balanced or cost, cost)
            if top <= SIMILAR * bottom:
                similar = min(similar or (i - j - 1, total, i), (i - j - 1, total, i))
    if similar is not None and -similar[0] >= min(8, width):
        return similar[2], similar[2] - similar[0]
    chosen = balanced or cheapest
    return None if chosen is None else (chosen[1], chosen[2])


def stream_tables(run: Sequence[Part]) -> Iterator[pa.Table]:
    """The bars of the parts ``run``, in order, a batch (of at most BATCH_ROWS) at a time."""
    for part in run:
        table = recent.get(part.path)
        if table is not None:
            yield table
            continue
        with pq.ParquetFile(part.path, pre_buffer=False) as f:
            for batch in f.iter_batches(BATCH_ROWS, columns=DATA_COLUMNS, use_threads=False):
                yield normalized(pa.Table.from_batches([batch]))


class OutOfOrder(Exception):
    """Parts to concatenate are not each sorted and one after the other."""


def concat_parts(folder: Path, run: Sequence[Part]) -> bool:
    """Replace the adjacent parts ``run`` by one holding their rows in order, streamed (memory:
    one batch, not the parts). False, with nothing changed, if their rows are out of order."""
    label = label_of(folder)
    first = last = None
    rows = 0
    tmp = files.write_temp(folder / part_name(run[0].first, run[-1].last), b"", mode=files.DATA_FILE_MODE,
                           durable=False)
    fd = files.open_nofollow(tmp, os.O_WRONLY)
    try:
        with os.fdopen(fd, "wb", closefd=False) as out, \
                pq.ParquetWriter(out, SCHEMA, **WRITE_OPTIONS) as writer:  # type: ignore[arg-type]
            pending: list[pa.Table] = []
            held = 0

            def flush() -> None:
                nonlocal held
                if pending:
                    writer.write_table(labelled(pa.concat_tables(pending), label), row_group_size=BATCH_ROWS)
                    pending.clear()
                    held = 0

            for table in stream_tables(run):
                ts = stamps_ns(table)
                if not len(ts):
                    continue
                if not ascending(ts) or (last is not None and ts[0] <= last):
                    raise OutOfOrder
                first = ts[0] if first is None else first
                last = ts[-1]
                pending.append(table)
                held += len(ts)
                rows += len(ts)
                if held >= BATCH_ROWS:
                    flush()
            flush()
        os.fsync(fd)  # with the footer, written as the writer closed
    except OutOfOrder:
        files.remove_quietly(tmp)
        return False
    except BaseException:
        files.remove_quietly(tmp)
        raise
    finally:
        os.close(fd)
    if first is None or last is None:
        files.remove_quietly(tmp)
        commit_temp(folder, None, None, run)
        return True
    new = part_name(int(first) // _PER_S, int(last) // _PER_S)
    commit_temp(folder, new, tmp, run)
    remember_rows(folder / new, rows)
    return True


class RecentParts:
    """The bars of the small parts this process wrote last, so that merging them (compaction's
    most frequent merge: 17 segments' parts) needs no read. Keyed by path, valid while the file
    has the same inode, size and modification time; at most ``max_rows`` rows in all."""

    def __init__(self, max_rows: int = 1 << 16, max_part_rows: int = 1 << 13) -> None:
        self.max_rows, self.max_part_rows = max_rows, max_part_rows
        self.tables: OrderedDict[str, tuple[tuple[int, int, int], pa.Table]] = OrderedDict()
        self.rows = 0
        self.guard = threading.Lock()

    def put(self, path: Path, table: pa.Table) -> None:
        if table.num_rows > self.max_part_rows:
            return
        st = os.stat(path)
        with self.guard:
            self._drop(os.fspath(path))
            self.tables[os.fspath(path)] = ((st.st_ino, st.st_size, st.st_mtime_ns), table)
            self.rows += table.num_rows
            while self.rows > self.max_rows:
                self._drop(next(iter(self.tables)))

    def get(self, path: Path) -> pa.Table | None:
        with self.guard:
            known = self.tables.get(os.fspath(path))
        if known is None:
            return None
        st = os.stat(path)
        return known[1] if known[0] == (st.st_ino, st.st_size, st.st_mtime_ns) else None

    def _drop(self, key: str) -> None:
        known = self.tables.pop(key, None)
        if known is not None:
            self.rows -= known[1].num_rows


recent = RecentParts()


def read_core_cached(path: Path) -> pa.Table:
    table = recent.get(path)
    return read_core(path) if table is None else table


_rows_known: dict[str, tuple[int, int, int, int]] = {}
"""Row counts of parts read before, by path: (inode, size, mtime_ns, rows)."""


def part_rows(path: Path) -> int:
    """A part's row count from its footer, remembered while the file is unchanged (a compaction
    looks at every part's count on every write beyond max_parts)."""
    st = os.stat(path)
    key = os.fspath(path)
    known = _rows_known.get(key)
    if known is not None and known[:3] == (st.st_ino, st.st_size, st.st_mtime_ns):
        return known[3]
    rows = pq.read_metadata(path).num_rows
    remember_rows(path, rows, st)
    return rows


def rows_hint(path: Path) -> int:
    """A part's row count as last seen by this process, without even a stat (compaction looks at
    every part on every write beyond max_parts; a stale count only changes which run it picks)."""
    known = _rows_known.get(os.fspath(path))
    return part_rows(path) if known is None else known[3]


def remember_rows(path: Path, rows: int, st: os.stat_result | None = None) -> None:
    st = st or os.stat(path)
    if len(_rows_known) >= 10_000:
        _rows_known.clear()
    _rows_known[os.fspath(path)] = (st.st_ino, st.st_size, st.st_mtime_ns, rows)


def is_leftover(name: str) -> bool:
    """A temp file of a write that crashed, or a hidden part of a finished commit."""
    return files.is_temp_name(name) or (name.startswith(".") and name.endswith(SUPERSEDED_SUFFIX))


def restore_hidden(folder: Path) -> None:
    """Hidden parts back under their names, where no part has that name."""
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(SUPERSEDED_SUFFIX):
            visible = name[1 : -len(SUPERSEDED_SUFFIX)]
            if parse_part_name(visible) and not os.path.lexists(folder / visible):
                os.rename(folder / name, folder / visible)


def needs_recovery(folder: Path) -> bool:
    """A commit record, a leftover file, or a part inside another: a crash left something behind."""
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    if COMMIT_FILE in names or any(is_leftover(name) for name in names):
        return True
    return bool(split_live(list_parts(folder, names))[1])
