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

import contextlib
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from ktrdr_collect import files
from ktrdr_collect.storage import series
from ktrdr_collect.storage.gaps import Interval
from ktrdr_collect.storage.series import Bar, changed_rows

SUFFIX = ".parquet"
PART_PREFIX = "part-"
COMMIT_FILE = "_commit.json"
SUPERSEDED_SUFFIX = ".superseded"
MAX_PARTS = 32
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


# --- conversions --------------------------------------------------------------------------------


def label_of(folder: Path) -> tuple[str, str, str]:
    """(provider, timeframe, symbol) of a series from its dataset folder
    (`<root>/<provider>/<timeframe>/<FILE>.parquet`)."""
    from ktrdr_collect.storage.paths import symbol_of_stem

    return folder.parent.parent.name, folder.parent.name, symbol_of_stem(folder.name.removesuffix(SUFFIX))


def bars_to_table(bars: Sequence[Bar], label: tuple[str, str, str] = ("", "", "")) -> pa.Table:
    columns = list(zip(*bars, strict=True)) if bars else [()] * 6
    n = len(columns[0])
    arrays = [pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int8()), pa.array([text], pa.string()))
              for text in label]
    arrays.append(pa.array([ts * _PER_S for ts in columns[0]], pa.int64()).cast(SCHEMA.field("timestamp").type))
    arrays += [pa.array(col, pa.float64()) for col in columns[1:]]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def table_to_bars(table: pa.Table) -> list[Bar]:
    stamps = table.column("timestamp").cast(pa.timestamp(TIME_UNIT)).cast(pa.int64()).to_pylist()
    values = [table.column(name).cast(pa.float64()).to_pylist() for name in VALUE_COLUMNS]
    return [(ns // _PER_S, *row) for ns, *row in zip(stamps, *values, strict=True)]


def read_part(path: Path) -> list[Bar]:
    return table_to_bars(pq.read_table(path, columns=["timestamp", *VALUE_COLUMNS]))


def merge_bars(old: Sequence[Sequence[Bar]], new: Sequence[Bar]) -> list[Bar]:
    """Bars of ``old`` and ``new`` sorted, one per timestamp; ``new`` wins on equal timestamps."""
    merged: dict[int, Bar] = {}
    for bars in old:
        merged.update((bar[0], bar) for bar in bars)
    merged.update((bar[0], bar) for bar in new)
    return [merged[ts] for ts in sorted(merged)]


def part_bytes(bars: Sequence[Bar], label: tuple[str, str, str] = ("", "", "")) -> bytes:
    """``bars`` as the bytes of one Parquet file, labelled with their series."""
    sink = pa.BufferOutputStream()
    pq.write_table(bars_to_table(bars, label), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


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

    def __init__(self, root: Path, max_parts: int = MAX_PARTS) -> None:
        if max_parts < 2:
            raise ValueError("max_parts must be at least 2")
        self.root = Path(root)
        self.max_parts = max_parts

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
        self._tidy(provider, timeframe, symbol)
        return series.coverage_of(self, (provider, timeframe, symbol))

    def count(self, provider: str, timeframe: str, symbol: str, ranges: Sequence[Interval]) -> int:
        """Stored rows with a timestamp inside any of ``ranges``."""
        return series.count_series(self, (provider, timeframe, symbol), ranges)

    def row_count(self, provider: str, timeframe: str, symbol: str) -> int:
        """Stored rows, from the parts' metadata (no data read)."""
        for attempt in range(10):
            try:
                return sum(pq.read_metadata(p.path).num_rows for p in self._live_parts(provider, timeframe, symbol))
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
        return series.write_series(self, (provider, timeframe, symbol), bars, covered,
                                   lambda new, _known: (self._store_bars(folder, new), None))

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
        self._open_dataset(path)
        live = list_parts(path)
        first, last = bars[0][0], bars[-1][0]
        hit = [p for p in live if p.first <= last and first <= p.last]
        written = len(bars)
        if hit:
            old = [read_part(p.path) for p in hit]
            written = changed_rows({bar[0]: bar for part in old for bar in part}, bars)
            bars = merge_bars(old, bars)
        commit_parts(path, bars, hit)
        compact(path, self.max_parts)
        return written

    def _replace_bars(self, path: Path, bars: Sequence[Bar]) -> None:
        self._open_dataset(path)
        commit_parts(path, bars, list_parts(path))

    def _erase_bars(self, path: Path, start: int | None, end: int | None) -> int:
        if not os.path.lexists(path):
            return 0
        self._open_dataset(path)
        lo, hi = series.erase_window(start, end)
        hit = [p for p in list_parts(path) if p.first < hi and lo <= p.last]
        old = [bar for p in hit for bar in read_part(p.path)]
        kept = series.outside(old, start, end)
        if hit:
            commit_parts(path, merge_bars([kept], []), hit)
        if start is None and end is None:  # the whole series: the empty dataset folder goes too
            with contextlib.suppress(OSError):
                os.rmdir(path)
                files.fsync_dir(path.parent)
        return len(old) - len(kept)

    def _open_dataset(self, path: Path) -> None:
        """Make the dataset folder (never through a link) and finish what a crash left in it."""
        if os.path.isfile(path) and not files.is_symlink(path):
            raise FileExistsError(f"{path} is a file, expected a Parquet dataset folder")
        created = not os.path.lexists(path)
        files.make_dirs(path, files.DATA_DIR_MODE, root=self.root)
        if created:
            files.fsync_dir(path.parent)
        recover(path)

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
            rows = sum(pq.read_metadata(p.path).num_rows for p in parts)
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


def read_dataset(folder: Path, start: int | None, end: int | None) -> list[Bar]:
    bars: list[Bar] = []
    for part in live_parts(folder):
        if (start is not None and part.last < start) or (end is not None and part.first >= end):
            continue
        bars.extend(
            bar for bar in read_part(part.path)
            if (start is None or bar[0] >= start) and (end is None or bar[0] < end)
        )
    if any(a[0] >= b[0] for a, b in zip(bars, bars[1:], strict=False)):
        return merge_bars([bars], [])  # overlapping parts someone put there by hand
    return bars


def commit_parts(folder: Path, bars: Sequence[Bar], old: Sequence[Part]) -> None:
    """Replace the parts ``old`` by one part of ``bars`` (none if empty); see the module doc."""
    new = part_name(bars[0][0], bars[-1][0]) if bars else None
    tmp = None
    if new is not None:
        tmp = files.write_temp(folder / new, part_bytes(bars, label_of(folder)), mode=files.DATA_FILE_MODE,
                               durable=True)
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


def recover(folder: Path) -> None:
    """Under the lock (no write is in progress): finish a crashed commit, then delete temp files,
    hidden parts and parts lying inside another (left by versions before the commit record)."""
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
    remove_files([folder / name for name in os.listdir(folder) if is_leftover(name)])
    remove_files([p.path for p in split_live(list_parts(folder))[1]])


def compact(folder: Path, max_parts: int) -> None:
    """While there are more than ``max_parts`` parts, merge the run of ``max_parts // 2 + 1``
    adjacent parts with the fewest rows into one."""
    parts = list_parts(folder)
    while len(parts) > max_parts:
        rows = [pq.read_metadata(p.path).num_rows for p in parts]
        width = max_parts // 2 + 1
        sums = [sum(rows[i : i + width]) for i in range(len(parts) - width + 1)]
        i = sums.index(min(sums))
        run = parts[i : i + width]
        commit_parts(folder, merge_bars([read_part(p.path) for p in run], []), run)
        parts = list_parts(folder)


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
    return bool(split_live(list_parts(folder))[1])
