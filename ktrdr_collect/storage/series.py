"""What every data format shares, as plain functions: where a series' files are, its lock, its
coverage record, and the order of writes that keeps the record honest.

A *series* is one (provider, timeframe, symbol) in one format. Beside its data (a CSV file, a
Parquet folder) it has, in ``<root>/<provider>/<timeframe>/.ktrdr/``, a coverage record
``<FILE><tag>.coverage.json`` (the ranges fetched) and a lock file ``<FILE><tag>.lock``; ``tag``
is ``""`` for CSV and ``".parquet"`` for Parquet, so the two formats never share a record.

The rule that keeps coverage honest (a range is "fetched" only when its bars are on disk):

- adding bars (``write_series``): the bars are made durable first, then the record grows;
- removing bars (``replace_series``, ``erase_series``, ``set_aside_series``): the record shrinks
  durably first, then the bars go.

A crash between the two steps leaves the record claiming less than the file holds, which only
costs a refetch of bars that are then stored again as they were.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ktrdr_collect import files
from ktrdr_collect.storage.gaps import Interval, merge_intervals, subtract
from ktrdr_collect.storage.paths import file_stem
from ktrdr_collect.storage.timeframes import format_ts, timeframe_seconds

Bar = tuple[int, float, float, float, float, float]

META_DIR = ".ktrdr"
COVERAGE_VERSION = 1
COVERAGE_SUFFIX = ".coverage.json"
LOCK_SUFFIX = ".lock"


# --- paths --------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def series_folder(root: Path, provider: str, timeframe: str) -> Path:
    """``<root>/<provider>/<timeframe>``, refusing names that would leave the data dir."""
    timeframe_seconds(timeframe)
    if not provider or "/" in provider or "\\" in provider or ".." in provider:
        raise ValueError(f"unsafe provider name {provider!r}")
    return Path(root) / provider / timeframe


@lru_cache(maxsize=16384)  # paths are immutable: every segment's write asks for the same few again
def data_path(root: Path, provider: str, timeframe: str, symbol: str, suffix: str) -> Path:
    return series_folder(root, provider, timeframe) / f"{file_stem(symbol)}{suffix}"


@lru_cache(maxsize=16384)
def meta_path(root: Path, provider: str, timeframe: str, symbol: str, suffix: str) -> Path:
    return series_folder(root, provider, timeframe) / META_DIR / f"{file_stem(symbol)}{suffix}"


# --- bars ---------------------------------------------------------------------------------------


def check_bars(bars: Sequence[Bar], covered: Interval) -> None:
    start, end = covered
    if start > end:
        raise ValueError(f"covered range {covered} ends before it starts")
    if hasattr(bars, "strictly_ascending"):  # storage.columns.Columns: the same checks, column-wise
        if len(bars) and (bars.first < start or bars.last >= end or not bars.strictly_ascending()):
            check_bars(list(bars), covered)  # says which bar is wrong
        return
    previous: int | None = None
    for bar in bars:
        ts = bar[0]
        if not start <= ts < end:
            raise ValueError(f"bar at {format_ts(ts)} is outside the covered range")
        if previous is not None and ts <= previous:
            raise ValueError(f"bars are not strictly ascending at {format_ts(ts)}")
        previous = ts


def changed_rows(stored: Mapping[int, Bar], bars: Sequence[Bar]) -> int:
    """How many of ``bars`` are not already stored exactly so (by timestamp)."""
    return sum(1 for bar in bars if stored.get(bar[0]) != tuple(bar))


def outside(bars: Sequence[Bar], start: int | None, end: int | None) -> list[Bar]:
    """The bars not in ``[start, end)`` (a missing bound is open)."""
    lo = start if start is not None else -(2**63)
    hi = end if end is not None else 2**63
    return [bar for bar in bars if not lo <= bar[0] < hi]


# --- locking ------------------------------------------------------------------------------------


class PathLock:
    """A per-file lock: re-entrant for the owning thread, exclusive against other threads (RLock)
    and other processes (fcntl.flock on the lock file, never opened through a link)."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = root
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None

    def acquire(self) -> None:
        self.rlock.acquire()
        try:
            if self.depth == 0:
                files.make_dirs(self.path.parent, files.DATA_DIR_MODE, root=self.root)
                fd = files.open_nofollow(self.path, os.O_RDWR | os.O_CREAT, files.DATA_FILE_MODE)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self.fd = fd
            self.depth += 1
        except BaseException:
            self.rlock.release()
            raise

    def release(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self.rlock.release()


_registry_guard = threading.Lock()
_registry: dict[str, PathLock] = {}


def _reset_registry_after_fork() -> None:
    global _registry_guard, _registry
    _registry_guard = threading.Lock()
    _registry = {}


os.register_at_fork(after_in_child=_reset_registry_after_fork)


def path_lock(path: Path, root: Path) -> PathLock:
    """The lock for `path`; its folders are made below `root` (the data dir) when first taken."""
    key = os.path.abspath(path)
    with _registry_guard:
        lock = _registry.get(key)
        if lock is None:
            lock = _registry[key] = PathLock(Path(key), Path(os.path.abspath(root)))
        return lock


@contextlib.contextmanager
def held(path: Path, root: Path) -> Iterator[None]:
    """Hold the lock at ``path`` (blocking)."""
    lock = path_lock(path, root)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


# --- the coverage record ------------------------------------------------------------------------


def coverage_from_doc(doc: object) -> list[Interval] | None:
    """Validated ranges from a parsed coverage document, or None if it is not one."""
    if not isinstance(doc, dict) or doc.get("version") != COVERAGE_VERSION:
        return None
    ranges = doc.get("ranges")
    if not isinstance(ranges, list):
        return None
    parsed: list[Interval] = []
    for item in ranges:
        if not (isinstance(item, list) and len(item) == 2 and all(type(x) is int for x in item)):
            return None
        parsed.append((item[0], item[1]))
    return merge_intervals(parsed)


class FileStats(NamedTuple):
    """What the coverage record says of the data file it was written with: its rows, first and
    last bar, and the size, modification time and inode that make these trustworthy (a listing
    uses them only while the file still has exactly that size, time and inode; anything else is
    read again)."""

    rows: int
    size: int
    mtime_ns: int
    inode: int
    first: int | None
    last: int | None

    def matches(self, st: os.stat_result) -> bool:
        """``st`` (the file now) is the file these stats describe."""
        return (self.size, self.mtime_ns, self.inode) == (st.st_size, st.st_mtime_ns, st.st_ino)

    @classmethod
    def of(cls, rows: int, st: os.stat_result, first: int | None, last: int | None) -> FileStats:
        return cls(rows, st.st_size, st.st_mtime_ns, st.st_ino, first, last)


def stats_from_doc(doc: object) -> FileStats | None:
    item = doc.get("file") if isinstance(doc, dict) else None
    if not isinstance(item, dict):
        return None
    counts = [item.get(k) for k in ("rows", "size", "mtime_ns", "inode")]
    bounds = [item.get(k) for k in ("first", "last")]
    if not all(type(v) is int and v >= 0 for v in counts) or not all(v is None or type(v) is int for v in bounds):
        return None
    if (counts[0] == 0) != (bounds[0] is None) or (bounds[0] is None) != (bounds[1] is None):
        return None
    return FileStats(*counts, *bounds)  # type: ignore[arg-type]


def read_record(path: Path | str) -> tuple[list[Interval] | None, FileStats | None]:
    """``(ranges, stats)`` of a coverage record. Ranges: None when there is no record (derive one
    from the data); [] for a damaged record: the data may have holes a derived range would hide,
    so everything is fetched again (the merge keeps what is stored)."""
    try:
        text = _read_small(path).decode("utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError):  # ValueError: not UTF-8 text (UnicodeDecodeError)
        return [], None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested beyond the parser's depth
        return [], None
    ranges = coverage_from_doc(doc)
    return ([], None) if ranges is None else (ranges, stats_from_doc(doc))


def _read_small(path: Path | str) -> bytes:
    """A small file's bytes in four system calls (open, a read, the read that finds the end, close):
    every write reads its series' record, and under other threads' load each call that gives the
    GIL up may wait to get it back; ``open()`` and ``read()`` make nine."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_coverage_file(path: Path | str) -> list[Interval] | None:
    """The recorded ranges (see read_record)."""
    return read_record(path)[0]


def save_coverage_file(path: Path, ranges: Sequence[Interval], durable: bool = False,
                       stats: FileStats | None = None) -> None:
    """``durable=False``: a power loss may leave the old record, which only costs a refetch."""
    doc: dict[str, object] = {"version": COVERAGE_VERSION, "ranges": [[s, e] for s, e in ranges]}
    if stats is not None:
        doc["file"] = stats._asdict()
    files.atomic_write(path, (json.dumps(doc) + "\n").encode(), mode=files.DATA_FILE_MODE, durable=durable)


def coverage_of(store: Any, key: tuple[str, str, str]) -> list[Interval]:
    """A series' fetched ranges: its record, else (data written without one) the span of its bars.
    The one reading both formats use."""
    recorded = read_coverage_file(store.coverage_path(*key))
    if recorded is not None:
        return recorded
    return derived_coverage(None, store.first_ts(*key), store.last_ts(*key))


def derived_coverage(recorded: list[Interval] | None, first: int | None, last: int | None) -> list[Interval]:
    """The record if there is one, else the span of the stored bars (data written without one)."""
    if recorded is not None:
        return recorded
    if first is None or last is None:
        return []
    return [(first, last + 1)]


# --- the write protocol, for any format ---------------------------------------------------------


class SeriesStore(Protocol):
    """What the shared protocol functions need of a store (storage.store.Store has it all)."""

    root: Path

    def path(self, provider: str, timeframe: str, symbol: str) -> Path: ...

    def coverage_path(self, provider: str, timeframe: str, symbol: str) -> Path: ...

    def lock(self, provider: str, timeframe: str, symbol: str) -> contextlib.AbstractContextManager[None]: ...

    def coverage(self, provider: str, timeframe: str, symbol: str) -> list[Interval]: ...

    def read(self, provider: str, timeframe: str, symbol: str, start: int | None = None,
             end: int | None = None) -> list[Bar]: ...


StoreBars = Callable[[Sequence[Bar], "FileStats | None"], "tuple[int, FileStats | None]"]
"""Store bars in the data file, given what the record says of the file; returns (rows added or
changed, the file's stats afterwards or None when unknown)."""


def write_series(store: SeriesStore, key: tuple[str, str, str], bars: Sequence[Bar], covered: Interval,
                 store_bars: StoreBars) -> int:
    """Store ``bars`` (ascending, inside ``covered``) durably with ``store_bars``, then record
    ``covered`` as fetched (with the file's stats). Returns the rows the data gained or changed."""
    check_bars(bars, covered)
    with store.lock(*key):
        record = store.coverage_path(*key)
        # Read coverage before storing: a derived-from-data range must not stretch over the new bars.
        ranges = merge_intervals([*store.coverage(*key), covered])
        stats = read_record(record)[1]
        written = 0
        if bars:
            written, stats = store_bars(bars, stats)
        save_coverage_file(record, ranges, stats=stats)
        return written


def replace_series(store: SeriesStore, key: tuple[str, str, str], bars: Sequence[Bar],
                   ranges: Sequence[Interval], replace_bars: Callable[[Sequence[Bar]], None]) -> None:
    """Replace the whole series and its fetched ranges. The record is emptied first, so a crash in
    between only costs a refetch."""
    check_bars(bars, (bars[0][0], bars[-1][0] + 1) if bars else (0, 0))
    with store.lock(*key):
        save_coverage_file(store.coverage_path(*key), [], durable=True)
        replace_bars(bars)
        save_coverage_file(store.coverage_path(*key), merge_intervals(list(ranges)))


def count_series(store: SeriesStore, key: tuple[str, str, str], ranges: Sequence[Interval]) -> int:
    """Stored rows with a timestamp inside any of ``ranges``."""
    merged = merge_intervals(list(ranges))
    if not merged:
        return 0
    bars = store.read(*key, merged[0][0], merged[-1][1])
    return sum(1 for bar in bars if any(lo <= bar[0] < hi for lo, hi in merged))


def set_aside_series(store: SeriesStore, key: tuple[str, str, str], tag: str) -> Path | None:
    """Move the data (file or folder) out of the way, kept beside it as ``<name>.<tag>``, and forget
    its fetched ranges, so the next job fetches the series again. Returns where it went."""
    with store.lock(*key):
        path = store.path(*key)
        save_coverage_file(store.coverage_path(*key), [], durable=True)
        if not os.path.lexists(path):
            return None
        target = path.with_name(f"{path.name}.{tag}")
        n = 1
        while os.path.lexists(target):  # never overwrite an earlier copy (nor a link)
            target, n = path.with_name(f"{path.name}.{tag}.{n}"), n + 1
        os.replace(path, target)
        files.fsync_dir(path.parent)
        return target


def erase_window(start: int | None, end: int | None) -> Interval:
    """``[start, end)`` with open bounds made total."""
    return (start if start is not None else -(2**62), end if end is not None else 2**62)


def erase_series(store: SeriesStore, key: tuple[str, str, str], start: int | None, end: int | None,
                 remove_bars: Callable[[int | None, int | None], int]) -> int:
    """Remove the bars in ``[start, end)`` and that range from the fetched ranges, so the next job
    fetches exactly it again. The record shrinks durably first: at no moment does it claim a range
    whose bars are gone. Returns how many bars were removed."""
    with store.lock(*key):
        window = erase_window(start, end)
        kept = [piece for lo, hi in store.coverage(*key) for piece in subtract((lo, hi), [window])]
        save_coverage_file(store.coverage_path(*key), merge_intervals(kept), durable=True)
        removed = remove_bars(start, end)
        if start is None and end is None:  # the whole series: no data, no record (an empty one is the same)
            files.remove_quietly(store.coverage_path(*key))
        return removed
