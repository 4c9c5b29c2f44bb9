"""What is stored under a data dir: one entry per series, from the folder listings, the coverage
records and each data file's head and tail (CSV rows are counted from line ends, Parquet rows from
the part footers), never a full parse, so that thousands of series list in well under a second.

``holes`` is how many bars the symbol's calendar expects inside the fetched ranges beyond the
rows stored: expected - rows, which is exact when every stored bar lies in a fetched range (what
``data verify`` checks, with each hole's place). The calendar comes from the caller (the CLI asks
the provider); storage knows no provider.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ktrdr_collect import files
from ktrdr_collect.storage import series
from ktrdr_collect.storage.calendar import Calendar
from ktrdr_collect.storage.gaps import Interval
from ktrdr_collect.storage.paths import file_stem, symbol_of_stem
from ktrdr_collect.storage.timeframes import TIMEFRAMES, timeframe_seconds

FORMATS = {"csv": ".csv", "parquet": ".parquet"}
"""Format -> data file (or folder) suffix; the coverage record's tag is "" for csv."""
TAGS = {"csv": "", "parquet": ".parquet"}

CalendarFor = Callable[[str, str], Calendar | None]
"""(provider, symbol) -> the symbol's calendar, or None when unknown."""


@dataclass(frozen=True, order=True)
class SeriesKey:
    provider: str
    timeframe: str
    symbol: str
    format: str
    stem: str = field(default="", compare=False, repr=False)
    """The file name without suffix (file_stem(symbol)), when the listing already knows it."""

    def file_stem(self) -> str:
        return self.stem or file_stem(self.symbol)

    def sort_key(self) -> tuple[str, int, str, str]:
        return self.provider, timeframe_seconds(self.timeframe), self.symbol, self.format

    def label(self) -> str:
        """``demo 1d AAPL`` (``(parquet)`` added for a Parquet series)."""
        tail = "" if self.format == "csv" else f" ({self.format})"
        return f"{self.provider} {self.timeframe} {self.symbol}{tail}"


@dataclass
class SeriesInfo:
    key: SeriesKey
    path: str
    first: int | None
    last: int | None
    rows: int
    size: int
    ranges: list[Interval] = field(default_factory=list)
    holes: int | None = None


def data_path(root: Path, key: SeriesKey) -> Path:
    return series.data_path(root, key.provider, key.timeframe, key.symbol, FORMATS[key.format])


def coverage_path(root: Path, key: SeriesKey) -> Path:
    return series.meta_path(root, key.provider, key.timeframe, key.symbol,
                            TAGS[key.format] + series.COVERAGE_SUFFIX)


def _subdirs(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _stem_format(name: str, is_dir: bool) -> tuple[str, str] | None:
    """``(stem, format)`` for a data file name, or None (actions files, set-aside copies, others).
    Stems are upper case by construction, so ``AAPL.actions.csv`` is never a series."""
    for fmt, suffix in FORMATS.items():
        if name.endswith(suffix) and is_dir == (fmt == "parquet"):
            stem = name[: -len(suffix)]
            if stem and stem == stem.upper():
                return stem, fmt
    return None


def _record_stem_format(name: str) -> tuple[str, str] | None:
    """``(stem, format)`` for a coverage record name in ``.ktrdr/``."""
    if not name.endswith(series.COVERAGE_SUFFIX):
        return None
    base = name[: -len(series.COVERAGE_SUFFIX)]
    if base.endswith(TAGS["parquet"]):
        base, fmt = base[: -len(TAGS["parquet"])], "parquet"
    else:
        fmt = "csv"
    return (base, fmt) if base and base == base.upper() else None


def series_in(folder: Path) -> dict[tuple[str, str], bool]:
    """``{(stem, format): has_data}`` of one ``<provider>/<timeframe>`` folder: data files, and
    coverage records without data (a range fetched where the provider had no bars)."""
    found: dict[tuple[str, str], bool] = {}
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                hit = _stem_format(entry.name, entry.is_dir(follow_symlinks=False))
                if hit is not None:
                    found[hit] = True
    except (FileNotFoundError, NotADirectoryError):
        return found
    try:
        names = os.listdir(folder / series.META_DIR)
    except (FileNotFoundError, NotADirectoryError):
        names = []
    for name in names:
        hit = _record_stem_format(name)
        if hit is not None:
            found.setdefault(hit, False)
    return found


def find_series(root: Path, symbols: Iterable[str] = (), provider: str | None = None,
                timeframe: str | None = None, fmt: str | None = None) -> list[SeriesKey]:
    """Every stored series matching the filters, sorted by provider, timeframe, symbol, format.
    A series with only an empty coverage record (erased) is not listed."""
    wanted = {file_stem(s) for s in symbols}
    keys: list[SeriesKey] = []
    for prov in _subdirs(root):
        if provider is not None and prov != provider:
            continue
        for tf in _subdirs(root / prov):
            if tf not in TIMEFRAMES or (timeframe is not None and tf != timeframe):
                continue
            for (stem, form), has_data in series_in(root / prov / tf).items():
                if (wanted and stem not in wanted) or (fmt is not None and form != fmt):
                    continue
                key = SeriesKey(prov, tf, symbol_of_stem(stem), form, stem)
                if has_data or series.read_coverage_file(paths_of(root, key)[1]):
                    keys.append(key)
    keys.sort(key=SeriesKey.sort_key)
    return keys


def paths_of(root: Path, key: SeriesKey) -> tuple[str, str]:
    """``(data, record)`` paths as strings (cheaper than Path objects, thousands at a time)."""
    folder = f"{root}/{key.provider}/{key.timeframe}"
    stem = key.file_stem()
    return (f"{folder}/{stem}{FORMATS[key.format]}",
            f"{folder}/{series.META_DIR}/{stem}{TAGS[key.format]}{series.COVERAGE_SUFFIX}")


def summarize(root: Path, key: SeriesKey, path: str | None = None,
              known: series.FileStats | None = None) -> tuple[int | None, int | None, int, int]:
    """``(first, last, rows, size)`` without a full read (``known``: what the coverage record
    says of the CSV file; its row count is used while it still describes the file)."""
    path = path or paths_of(root, key)[0]
    if key.format == "csv":
        from ktrdr_collect.storage.csv_store import summarize as csv_summary

        return csv_summary(path, known)
    try:
        from ktrdr_collect.storage.parquet_store import summarize as parquet_summary
    except ImportError:  # pyarrow missing: rows unknown (0)
        return None, None, 0, 0
    return parquet_summary(Path(path))


class HoleCounter:
    """Expected bars per (calendar, timeframe, range), memoised: series collected together share
    their ranges, so a listing counts each range once."""

    def __init__(self) -> None:
        self.memo: dict[tuple[int, str, int, int], int] = {}

    def expected(self, calendar: Calendar, timeframe: str, ranges: list[Interval]) -> int:
        total = 0
        for lo, hi in ranges:
            k = (id(calendar), timeframe, lo, hi)
            n = self.memo.get(k)
            if n is None:
                n = self.memo[k] = calendar.count(timeframe, lo, hi)
            total += n
        return total


def describe(root: Path, key: SeriesKey, calendar: Calendar | None = None,
             counter: HoleCounter | None = None, index: Index | None = None) -> SeriesInfo:
    """One series' entry; ``index`` (a folder's cache) spares reading files that did not change."""
    data, record = paths_of(root, key)
    summary = index.lookup(key, data, record) if index is not None else None
    if summary is None:
        recorded, stats = series.read_record(record)
        first, last, rows, size = summarize(root, key, data, stats)
        if index is not None:
            if stats is not None and (rows, first, last) == (stats.rows, stats.first, stats.last):
                index.forget(key)  # the record says it all: nothing worth caching
            else:
                index.store(key, data, record, (first, last, rows, size), recorded)
    else:
        (first, last, rows, size), recorded = summary
    ranges = series.derived_coverage(recorded, first, last)
    holes = None
    if calendar is not None:
        expected = (counter or HoleCounter()).expected(calendar, key.timeframe, ranges)
        holes = max(0, expected - rows)
    return SeriesInfo(key, data, first, last, rows, size, ranges, holes)


def list_series(root: Path, keys: Iterable[SeriesKey], calendar_for: CalendarFor | None = None,
                use_index: bool = True) -> Iterator[SeriesInfo]:
    counter = HoleCounter()
    index: Index | None = None
    for key in keys:
        folder = f"{root}/{key.provider}/{key.timeframe}"
        if use_index and (index is None or index.folder != folder):
            if index is not None:
                index.save()
            index = Index.load(folder)
        calendar = calendar_for(key.provider, key.symbol) if calendar_for else None
        yield describe(root, key, calendar, counter, index)
    if index is not None:
        index.save()


# --- the listing cache --------------------------------------------------------------------------

INDEX_FILE = "inventory.json"
INDEX_VERSION = 1

Signature = tuple[int, int, int] | None
"""(size, mtime_ns, inode) of a file or folder; None when it does not exist."""
Summary = tuple[int | None, int | None, int, int]


def signature(path: str) -> Signature:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


class Index:
    """A folder's cache of series summaries (``.ktrdr/inventory.json``), each kept with the
    signature (size, modification time, inode) of the data file and the coverage record it was
    read from: an entry is used only while both are unchanged, so a write, a crash's leftover or
    a hand edit is always read again. Only series whose record does not describe their file (its
    rows had to be counted) are cached: the others cost a record read and a stat anyway. Only
    ``data list`` reads and writes it; losing it (or not being allowed to write it) costs a
    slower listing, never a wrong one."""

    def __init__(self, folder: str, entries: dict[str, list[object]]) -> None:
        self.folder = folder
        self.entries = entries
        self.changed = False

    @classmethod
    def load(cls, folder: str) -> Index:
        try:
            with open(os.path.join(folder, series.META_DIR, INDEX_FILE), encoding="utf-8") as f:
                doc = json.load(f)
            entries = doc["entries"] if doc.get("version") == INDEX_VERSION else {}
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
            entries = {}
        return cls(folder, entries)

    @staticmethod
    def name(key: SeriesKey) -> str:
        return key.file_stem() + FORMATS[key.format]

    def lookup(self, key: SeriesKey, data: str, record: str) -> tuple[Summary, list[Interval] | None] | None:
        entry = self.entries.get(self.name(key))
        try:
            data_sig, record_sig, first, last, rows, size, ranges = entry  # type: ignore[misc]
            if [data_sig, record_sig] != [as_list(signature(data)), as_list(signature(record))]:
                return None
            recorded = None if ranges is None else [(int(lo), int(hi)) for lo, hi in ranges]
            return (first, last, int(rows), int(size)), recorded
        except (TypeError, ValueError):
            return None

    def store(self, key: SeriesKey, data: str, record: str, summary: Summary, recorded: list[Interval] | None) -> None:
        self.entries[self.name(key)] = [
            as_list(signature(data)), as_list(signature(record)), *summary,
            None if recorded is None else [list(r) for r in recorded],
        ]
        self.changed = True

    def forget(self, key: SeriesKey) -> None:
        if self.entries.pop(self.name(key), None) is not None:
            self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        meta = os.path.join(self.folder, series.META_DIR)
        doc = json.dumps({"version": INDEX_VERSION, "entries": self.entries}, separators=(",", ":"))
        with contextlib.suppress(OSError):  # a read-only data dir: no cache, same listing
            if os.path.isdir(meta):
                files.atomic_write(Path(meta) / INDEX_FILE, doc.encode(), mode=files.DATA_FILE_MODE, durable=False)
        self.changed = False


def as_list(sig: Signature) -> list[int] | None:
    return None if sig is None else list(sig)
