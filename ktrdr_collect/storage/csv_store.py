"""OHLCV bars in CSV files, one file per (provider, timeframe, symbol), with coverage metadata.

Layout::

    <root>/<provider>/<timeframe>/<FILE>.csv
    <root>/<provider>/<timeframe>/.ktrdr/<FILE>.coverage.json
    <root>/<provider>/<timeframe>/.ktrdr/<FILE>.lock

Crash safety: bars are fsynced before the coverage file is atomically replaced, so recorded
coverage never claims bars that are not on disk. Appends only ever add whole lines after the last
complete one (a torn last line is dropped), and any other change rewrites the file atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import IO

from ktrdr_collect import files
from ktrdr_collect.storage.gaps import Interval, merge_intervals
from ktrdr_collect.storage.paths import file_stem
from ktrdr_collect.storage.timeframes import format_ts, parse_ts, timeframe_seconds

Bar = tuple[int, float, float, float, float, float]

HEADER = "timestamp,open,high,low,close,volume\n"
META_DIR = ".ktrdr"
COVERAGE_VERSION = 1
_TAIL_CHUNK = 4096


# --- formatting ---------------------------------------------------------------------------------


def format_number(x: float) -> str:
    """Shortest text that round-trips the float, as a plain decimal (never exponent notation:
    ``5e-05`` is written ``0.00005``, ``1e+16`` ``10000000000000000``); integral values lose their ``.0``."""
    return plain_decimal(repr(float(x)))


def plain_decimal(text: str) -> str:
    """A float's repr as a plain decimal with the same digits (``5.012e-05`` -> ``0.00005012``),
    without a trailing ``.0``."""
    if "e" in text:
        text = format(Decimal(text), "f")  # exact: the digits stay, the exponent is spelled out
    return text[:-2] if text.endswith(".0") else text


def format_row(bar: Bar) -> str:
    """One CSV line; the same text as format_number on each value, in one pass (hot path: only a
    value whose repr has an exponent, below 1e-4 or from 1e16, takes the slow path)."""
    ts, o, h, low, c, v = bar
    text = f"{format_ts(ts)},{float(o)!r},{float(h)!r},{float(low)!r},{float(c)!r},{float(v)!r}\n"
    if "e" in text:  # an exponent (format_ts never writes an "e"): the slow path, field by field
        stamp, *values = text[:-1].split(",")
        return ",".join([stamp, *map(plain_decimal, values)]) + "\n"
    if ".0," in text:
        text = text.replace(".0,", ",")
    if text.endswith(".0\n"):
        text = text[:-3] + "\n"
    return text


def parse_row(line: str) -> Bar:
    fields = line.split(",")
    if len(fields) != 6:
        raise ValueError(f"expected 6 fields, got {len(fields)}: {line!r}")
    return (
        parse_ts(fields[0]),
        float(fields[1]),
        float(fields[2]),
        float(fields[3]),
        float(fields[4]),
        float(fields[5]),
    )


def is_header_or_blank(line: str) -> bool:
    """Empty lines and header lines (starting with a letter, e.g. ``timestamp,...``) hold no bar."""
    stripped = line.lstrip()
    return not stripped.strip() or stripped[0].isalpha()


def parse_lines(lines: Iterator[str], start: int | None, end: int | None) -> list[Bar]:
    """Parse complete data lines (each ending in ``\\n``); an unterminated last line is skipped."""
    bars: list[Bar] = []
    for number, line in enumerate(lines, start=1):
        if not line.endswith("\n") or is_header_or_blank(line):
            continue  # a torn last line, the header, or an empty line
        try:
            bar = parse_row(line.rstrip("\r\n"))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        if end is not None and bar[0] >= end:
            break
        if start is None or bar[0] >= start:
            bars.append(bar)
    return bars


def check_bars(bars: Sequence[Bar], covered: Interval) -> None:
    start, end = covered
    if start > end:
        raise ValueError(f"covered range {covered} ends before it starts")
    previous: int | None = None
    for bar in bars:
        ts = bar[0]
        if not start <= ts < end:
            raise ValueError(f"bar at {format_ts(ts)} is outside the covered range")
        if previous is not None and ts <= previous:
            raise ValueError(f"bars are not strictly ascending at {format_ts(ts)}")
        previous = ts


# --- low level file helpers ---------------------------------------------------------------------


def read_tail(f: IO[bytes], size: int) -> tuple[int, str | None]:
    """``(good_size, last_line)``: the offset just past the last ``\\n`` and the last complete
    non-blank line before it, reading only the end of the file."""
    chunk = _TAIL_CHUNK
    while True:
        pos = max(0, size - chunk)
        f.seek(pos)
        data = f.read(size - pos)
        last_nl = data.rfind(b"\n")
        if last_nl < 0 and pos > 0:
            chunk *= 4
            continue
        good_size = pos + last_nl + 1
        lines = data[: last_nl + 1].split(b"\n")[:-1]
        if pos > 0:
            lines = lines[1:]  # the first piece may be the end of a longer line
        for raw in reversed(lines):
            if raw.strip():
                return good_size, raw.decode("utf-8")
        if pos == 0:
            return good_size, None
        chunk *= 4


def last_ts_of(line: str | None) -> int | None:
    if line is None or is_header_or_blank(line):
        return None
    return parse_row(line.rstrip("\r"))[0]


# --- locking ------------------------------------------------------------------------------------


class _PathLock:
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
_registry: dict[str, _PathLock] = {}


def _reset_registry_after_fork() -> None:
    global _registry_guard, _registry
    _registry_guard = threading.Lock()
    _registry = {}


os.register_at_fork(after_in_child=_reset_registry_after_fork)


def path_lock(path: Path, root: Path) -> _PathLock:
    """The lock for `path`; its folders are made below `root` (the data dir) when first taken."""
    key = os.path.abspath(path)
    with _registry_guard:
        lock = _registry.get(key)
        if lock is None:
            lock = _registry[key] = _PathLock(Path(key), Path(os.path.abspath(root)))
        return lock


# --- the store ----------------------------------------------------------------------------------


class CsvStore:
    """CSV files of bars under ``root``, plus per-file coverage metadata and locks."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"CsvStore({str(self.root)!r})"

    # paths

    def folder(self, provider: str, timeframe: str) -> Path:
        timeframe_seconds(timeframe)
        if not provider or "/" in provider or "\\" in provider or ".." in provider:
            raise ValueError(f"unsafe provider name {provider!r}")
        return self.root / provider / timeframe

    def path(self, provider: str, timeframe: str, symbol: str) -> Path:
        return self.folder(provider, timeframe) / f"{file_stem(symbol)}.csv"

    def meta_path(self, provider: str, timeframe: str, symbol: str, suffix: str) -> Path:
        return self.folder(provider, timeframe) / META_DIR / f"{file_stem(symbol)}{suffix}"

    def coverage_path(self, provider: str, timeframe: str, symbol: str) -> Path:
        return self.meta_path(provider, timeframe, symbol, ".coverage.json")

    def lock_path(self, provider: str, timeframe: str, symbol: str) -> Path:
        return self.meta_path(provider, timeframe, symbol, ".lock")

    # locking

    @contextlib.contextmanager
    def lock(self, provider: str, timeframe: str, symbol: str) -> Iterator[None]:
        """Exclusive, blocking lock for one data file (between threads and processes; re-entrant
        within one thread, so ``write`` may be called while holding it)."""
        lock = path_lock(self.lock_path(provider, timeframe, symbol), self.root)
        lock.acquire()
        try:
            yield
        finally:
            lock.release()

    # reading

    def read(
        self, provider: str, timeframe: str, symbol: str, start: int | None = None, end: int | None = None
    ) -> list[Bar]:
        """Stored bars with ``start <= ts < end`` (either bound optional), ascending."""
        try:
            with open(self.path(provider, timeframe, symbol), encoding="utf-8", newline="") as f:
                return parse_lines(iter(f), start, end)
        except FileNotFoundError:
            return []

    def first_ts(self, provider: str, timeframe: str, symbol: str) -> int | None:
        try:
            with open(self.path(provider, timeframe, symbol), encoding="utf-8", newline="") as f:
                for line in f:
                    if line.endswith("\n") and not is_header_or_blank(line):
                        return parse_row(line.rstrip("\r\n"))[0]
        except FileNotFoundError:
            pass
        return None

    def last_ts(self, provider: str, timeframe: str, symbol: str) -> int | None:
        try:
            with open(self.path(provider, timeframe, symbol), "rb") as f:
                size = f.seek(0, os.SEEK_END)
                return last_ts_of(read_tail(f, size)[1])
        except FileNotFoundError:
            return None

    def coverage(self, provider: str, timeframe: str, symbol: str) -> list[Interval]:
        """Recorded covered ranges; derived from the data file if there is no readable record."""
        recorded = self._read_coverage(provider, timeframe, symbol)
        if recorded is not None:
            return recorded
        first = self.first_ts(provider, timeframe, symbol)
        last = self.last_ts(provider, timeframe, symbol)
        if first is None or last is None:
            return []
        return [(first, last + 1)]

    def _read_coverage(self, provider: str, timeframe: str, symbol: str) -> list[Interval] | None:
        """None when there is no record (derive one from the data); [] for a damaged record: the
        data may have holes a derived range would hide, so everything is fetched again (the merge
        keeps what is stored)."""
        try:
            text = self.coverage_path(provider, timeframe, symbol).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # ValueError: not UTF-8 text (UnicodeDecodeError)
            return []
        try:
            ranges = coverage_from_doc(json.loads(text))
        except (ValueError, RecursionError):  # not JSON, or nested beyond the parser's depth
            return []
        return [] if ranges is None else ranges

    # writing

    def write(self, provider: str, timeframe: str, symbol: str, bars: Sequence[Bar], covered: Interval) -> int:
        """Store ``bars`` (ascending, inside ``covered``) durably, then record ``covered`` as
        fetched. Returns how many rows the file gained or changed (a bar stored again as it was
        counts 0), so a job's counts are what the files saw, even when a crash made it refetch."""
        check_bars(bars, covered)
        path = self.path(provider, timeframe, symbol)
        with self.lock(provider, timeframe, symbol):
            # Read coverage before storing: a derived-from-data range must not stretch over the new bars.
            ranges = merge_intervals([*self.coverage(provider, timeframe, symbol), covered])
            written = self._store_bars(path, bars) if bars else 0
            self._save_coverage(provider, timeframe, symbol, ranges)
            return written

    def count(self, provider: str, timeframe: str, symbol: str, ranges: Sequence[Interval]) -> int:
        """Stored rows with a timestamp inside any of ``ranges``."""
        merged = merge_intervals(list(ranges))
        if not merged:
            return 0
        bars = self.read(provider, timeframe, symbol, merged[0][0], merged[-1][1])
        return sum(1 for bar in bars if any(lo <= bar[0] < hi for lo, hi in merged))

    def replace(self, provider: str, timeframe: str, symbol: str, bars: Sequence[Bar],
                ranges: Sequence[Interval]) -> None:
        """Replace the whole series and its fetched ranges (caller holds the lock or it is taken
        here). The record is emptied first, so a crash in between only costs a refetch."""
        check_bars(bars, (bars[0][0], bars[-1][0] + 1) if bars else (0, 0))
        with self.lock(provider, timeframe, symbol):
            self._save_coverage(provider, timeframe, symbol, [], durable=True)
            self._replace_bars(self.path(provider, timeframe, symbol), bars)
            self._save_coverage(provider, timeframe, symbol, merge_intervals(list(ranges)))

    def set_aside(self, provider: str, timeframe: str, symbol: str, tag: str) -> Path | None:
        """Move the data file out of the way (kept beside it as ``<name>.<tag>``) and forget its
        fetched ranges, so the next job fetches the series again. Returns where it went."""
        with self.lock(provider, timeframe, symbol):
            path = self.path(provider, timeframe, symbol)
            self._save_coverage(provider, timeframe, symbol, [], durable=True)
            if not path.exists():
                return None
            target = path.with_name(f"{path.name}.{tag}")
            n = 1
            while os.path.lexists(target):  # never overwrite an earlier copy (nor a link)
                target, n = path.with_name(f"{path.name}.{tag}.{n}"), n + 1
            os.replace(path, target)
            files.fsync_dir(path.parent)
            return target

    def _save_coverage(self, provider: str, timeframe: str, symbol: str, ranges: Sequence[Interval],
                       durable: bool = False) -> None:
        """``durable=False``: a power loss may leave the old record, which only costs a refetch."""
        doc = {"version": COVERAGE_VERSION, "ranges": [[s, e] for s, e in ranges]}
        files.atomic_write(self.coverage_path(provider, timeframe, symbol), (json.dumps(doc) + "\n").encode(),
                           mode=files.DATA_FILE_MODE, durable=durable)

    def _make_folder(self, path: Path) -> None:
        """The data file's folder, below the data dir, never through a link."""
        files.make_dirs(path.parent, files.DATA_DIR_MODE, root=self.root)

    def _replace_bars(self, path: Path, bars: Sequence[Bar]) -> None:
        self._make_folder(path)
        write_csv(path, bars)

    def _store_bars(self, path: Path, bars: Sequence[Bar]) -> int:
        self._make_folder(path)
        fd = files.open_nofollow(path, os.O_RDWR | os.O_CREAT, files.DATA_FILE_MODE)
        with os.fdopen(fd, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            good_size, last_line = read_tail(f, size)
            last = last_ts_of(last_line)
            if last is None or last < bars[0][0]:
                try:
                    append_rows(f, size, good_size, bars)
                except OSError:
                    if good_size == 0:  # not even the header fitted: no file rather than an empty one
                        files.remove_quietly(path)
                    raise
                if size == 0:
                    files.fsync_dir(path.parent)
                return len(bars)
        return merge_rewrite(path, bars)


def append_rows(f: IO[bytes], size: int, good_size: int, bars: Sequence[Bar]) -> None:
    """Append after the last complete line, dropping a torn one; write the header if needed. On any
    error (a full disk) the file is cut back to its complete lines: never half a segment."""
    text = "".join(map(format_row, bars))
    if good_size == 0:
        text = HEADER + text
    fd = f.fileno()
    try:
        if good_size != size:
            os.ftruncate(fd, good_size)
        files.write_all(fd, text.encode("utf-8"), offset=good_size)
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, good_size)
        raise


def merge_rewrite(path: Path, bars: Sequence[Bar]) -> int:
    """Merge ``bars`` into the file (new bars win on equal timestamps) and replace it atomically;
    returns how many rows were added or changed."""
    with open(path, encoding="utf-8", newline="") as f:
        merged = {bar[0]: bar for bar in parse_lines(iter(f), None, None)}
    written = changed_rows(merged, bars)
    merged.update((bar[0], bar) for bar in bars)
    write_csv(path, [merged[ts] for ts in sorted(merged)])
    return written


def changed_rows(stored: Mapping[int, Bar], bars: Sequence[Bar]) -> int:
    """How many of ``bars`` are not already stored exactly so (by timestamp)."""
    return sum(1 for bar in bars if stored.get(bar[0]) != tuple(bar))


def write_csv(path: Path, bars: Sequence[Bar]) -> None:
    """Replace the data file with ``bars``, durably (files.atomic_write: the old file survives any error)."""
    text = HEADER + "".join(map(format_row, bars))
    files.atomic_write(path, text.encode("utf-8"), mode=files.DATA_FILE_MODE, durable=True)


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
