"""OHLCV bars in CSV files, one file per (provider, timeframe, symbol), with coverage metadata.

Layout::

    <root>/<provider>/<timeframe>/<FILE>.csv
    <root>/<provider>/<timeframe>/.ktrdr/<FILE>.coverage.json
    <root>/<provider>/<timeframe>/.ktrdr/<FILE>.lock

Crash safety: bars are fsynced before the coverage file is atomically replaced, so recorded
coverage never claims bars that are not on disk. Appends only ever add whole lines after the last
complete one (a torn last line is dropped), and any other change rewrites the file atomically.
The coverage record, the lock and the order of writes are storage.series' (shared with Parquet).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ktrdr_collect import files
from ktrdr_collect.storage import series
from ktrdr_collect.storage.gaps import Interval
from ktrdr_collect.storage.series import Bar, FileStats, changed_rows
from ktrdr_collect.storage.timeframes import format_ts, parse_ts

if TYPE_CHECKING:
    import mmap

    from ktrdr_collect.storage.columns import Columns

HEADER = "timestamp,open,high,low,close,volume\n"
SUFFIX = ".csv"
META_DIR = series.META_DIR
COVERAGE_VERSION = series.COVERAGE_VERSION
_COUNT_CHUNK = 1 << 20
_TAIL_CHUNK = 4096
_TEXT_CHUNK = 16_384
"""Bars made into text at a time (7 small bytes objects a bar while it lasts)."""


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


def csv_text(bars: Sequence[Bar]) -> bytes:
    """The CSV lines of ``bars``, byte for byte what ``format_row`` writes for each, made column-wise
    with no Python call per bar. Usually by storage.csv_lines, with array operations only (prices
    and volumes of up to 12 decimals below 2**50); otherwise timestamps by csv_lines.iso_stamps and
    each value column by msgspec's shortest round-trip encoder (the digits of ``repr``) in one call
    with ``.0`` dropped from the whole column at once (only a value msgspec spells with an exponent,
    below 1e-6 or from 1e16, where ``repr`` and msgspec differ, is respelled one by one), the columns
    interleaved by slice assignment into one list and joined once."""
    if not bars:
        return b""
    import msgspec

    from ktrdr_collect.storage.columns import as_columns
    from ktrdr_collect.storage.csv_lines import csv_lines, iso_stamps

    cols = as_columns(bars)
    if not cols.all_finite():  # msgspec writes NaN as null: the row-wise path spells what it is
        return "".join(map(format_row, cols)).encode()
    if len(cols) > _TEXT_CHUNK:  # a batch of a backfill: its tokens a chunk at a time
        return b"".join(csv_text(cols[k: k + _TEXT_CHUNK]) for k in range(0, len(cols), _TEXT_CHUNK))
    text = csv_lines(cols.ts, cols.values)  # the usual values, with array operations only
    if text is not None:
        return text
    n = len(cols)
    tokens: list[bytes] = [b""] * (7 * n)  # per bar: stamp, o, h, l, c, v, "" (the line end)
    tokens[0::7] = iso_stamps(cols.ts)
    for i in range(5):
        text = msgspec.json.encode(cols.values[:, i].tolist())  # [100.0,101.5,3e-7]
        text = (text[1:-1] + b",").replace(b".0,", b",")
        values = text[:-1].split(b",")
        if b"e" in text:
            values = [_plain(v) if b"e" in v else v for v in values]
        tokens[i + 1::7] = values
    # "stamp,o,h,l,c,v,,stamp,..." -> one line a bar ("," never ends a token, so ",," is a line end)
    return b",".join(tokens)[:-1].replace(b",,", b"\n") + b"\n"


def _plain(value: bytes) -> bytes:
    return format_number(float(value)).encode()


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


# --- the store ----------------------------------------------------------------------------------


class CsvStore:
    """CSV files of bars under ``root``, plus per-file coverage metadata and locks (storage.store.Store)."""

    format = "csv"
    suffix = SUFFIX
    tag = ""
    """Coverage record and lock are ``.ktrdr/<FILE><tag>.coverage.json`` / ``.lock``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"CsvStore({str(self.root)!r})"

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
        """Exclusive, blocking lock for one data file (between threads and processes; re-entrant
        within one thread, so ``write`` may be called while holding it)."""
        return series.held(self.lock_path(provider, timeframe, symbol), self.root)

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
        return first_ts_of(self.path(provider, timeframe, symbol))

    def last_ts(self, provider: str, timeframe: str, symbol: str) -> int | None:
        return last_ts_in(self.path(provider, timeframe, symbol))

    def coverage(self, provider: str, timeframe: str, symbol: str) -> list[Interval]:
        """Recorded covered ranges; derived from the data file if there is no readable record."""
        return series.coverage_of(self, (provider, timeframe, symbol))

    def count(self, provider: str, timeframe: str, symbol: str, ranges: Sequence[Interval]) -> int:
        """Stored rows with a timestamp inside any of ``ranges``."""
        return series.count_series(self, (provider, timeframe, symbol), ranges)

    def row_count(self, provider: str, timeframe: str, symbol: str) -> int:
        """Stored rows, without parsing them (counts line ends)."""
        return count_rows(self.path(provider, timeframe, symbol))

    def size(self, provider: str, timeframe: str, symbol: str) -> int:
        try:
            return os.stat(self.path(provider, timeframe, symbol)).st_size
        except FileNotFoundError:
            return 0

    # writing

    def write(self, provider: str, timeframe: str, symbol: str, bars: Sequence[Bar], covered: Interval) -> int:
        """Store ``bars`` (ascending, inside ``covered``) durably, then record ``covered`` as
        fetched. Returns how many rows the file gained or changed (a bar stored again as it was
        counts 0), so a job's counts are what the files saw, even when a crash made it refetch."""
        path = self.path(provider, timeframe, symbol)
        return series.write_series(self, (provider, timeframe, symbol), bars, covered,
                                   lambda new, known: store_bars(path, new, self.root, known))

    def replace(self, provider: str, timeframe: str, symbol: str, bars: Sequence[Bar],
                ranges: Sequence[Interval]) -> None:
        """Replace the whole series and its fetched ranges (caller holds the lock or it is taken
        here). The record is emptied first, so a crash in between only costs a refetch."""
        path = self.path(provider, timeframe, symbol)
        series.replace_series(self, (provider, timeframe, symbol), bars, ranges,
                              lambda new: replace_bars(path, new, self.root))

    def set_aside(self, provider: str, timeframe: str, symbol: str, tag: str) -> Path | None:
        """Move the data file out of the way (kept beside it as ``<name>.<tag>``) and forget its
        fetched ranges, so the next job fetches the series again. Returns where it went."""
        return series.set_aside_series(self, (provider, timeframe, symbol), tag)

    def erase(self, provider: str, timeframe: str, symbol: str, start: int | None = None,
              end: int | None = None) -> int:
        """Remove the bars in ``[start, end)`` (whole series without bounds) and their fetched
        ranges; returns how many bars went (storage.series.erase_series: record first)."""
        path = self.path(provider, timeframe, symbol)
        return series.erase_series(self, (provider, timeframe, symbol), start, end,
                                   lambda lo, hi: erase_rows(path, lo, hi))

    def _save_coverage(self, provider: str, timeframe: str, symbol: str, ranges: Sequence[Interval],
                       durable: bool = False) -> None:
        series.save_coverage_file(self.coverage_path(provider, timeframe, symbol), ranges, durable)


# --- the file operations the store uses ---------------------------------------------------------


def first_ts_of(path: Path | str) -> int | None:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for line in f:
                if line.endswith("\n") and not is_header_or_blank(line):
                    return parse_row(line.rstrip("\r\n"))[0]
    except FileNotFoundError:
        pass
    return None


def last_ts_in(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            return last_ts_of(read_tail(f, size)[1])
    except FileNotFoundError:
        return None


def count_rows(path: Path) -> int:
    """Complete data lines of a CSV we wrote (one bar a line, one header line), counted in 1 MiB
    chunks without decoding; a torn last line is not counted."""
    lines = 0
    first = b""
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_COUNT_CHUNK):
                if not first:
                    first = chunk[:1]
                lines += chunk.count(b"\n")
    except FileNotFoundError:
        return 0
    return max(0, lines - 1) if first.isalpha() else lines


def summarize(path: Path | str, known: FileStats | None = None) -> tuple[int | None, int | None, int, int]:
    """``(first_ts, last_ts, rows, size)`` of a CSV: what the coverage record says (``known``)
    while the file is still the one it describes; else its first and last lines parsed and its
    line ends counted in one pass (no parsing). A missing file is all empty."""
    if known is not None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None, None, 0, 0
        if known.matches(st):  # the file the record was written with: nothing to read
            return known.first, known.last, known.rows, st.st_size
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed below; one open per file keeps listing fast)
    except FileNotFoundError:
        return None, None, 0, 0
    with f:
        head = f.read(_COUNT_CHUNK) or b""
        lines, tail = head.count(b"\n"), head
        while chunk := f.read(_COUNT_CHUNK):
            lines += chunk.count(b"\n")
            tail = tail[-_TAIL_CHUNK:] + chunk
        size = f.tell()
        rows = max(0, lines - 1) if head[:1].isalpha() else lines
    if rows == 0:
        return None, None, 0, size
    first = first_data_ts(head)
    if first is None:  # the first line is longer than what was read of the head: read it as a line
        first = first_ts_of(path)
    return first, last_ts_of(last_complete_line(tail)), rows, size


def first_data_ts(head: bytes) -> int | None:
    """The first bar's time from the start of a file (None if its line is not all in ``head``)."""
    start = 0
    while (end := head.find(b"\n", start)) >= 0:
        line = head[start:end].decode("utf-8", "replace")
        if not is_header_or_blank(line):
            return parse_row(line.rstrip("\r"))[0]
        start = end + 1
    return None


def last_complete_line(tail: bytes) -> str | None:
    """The last complete non-blank line of the end of a file."""
    end = tail.rfind(b"\n")
    while end > 0:
        start = tail.rfind(b"\n", 0, end) + 1
        if tail[start:end].strip():
            return tail[start:end].decode("utf-8", "replace")
        end = start - 1
    return None


def make_folder(path: Path, root: Path) -> None:
    """The data file's folder, below the data dir, never through a link."""
    files.make_dirs(path.parent, files.DATA_DIR_MODE, root=root)


def replace_bars(path: Path, bars: Sequence[Bar], root: Path) -> None:
    make_folder(path, root)
    write_csv(path, bars)


def store_bars(path: Path, bars: Sequence[Bar], root: Path,
               known: FileStats | None = None) -> tuple[int, FileStats | None]:
    """Add ``bars`` to the file: appended if they all come after its last bar, else merged.
    Returns (rows added or changed, the file's stats after, or None when its rows are unknown:
    ``known`` — what the record says — no longer describes the file)."""
    make_folder(path, root)
    fd = files.open_nofollow(path, os.O_RDWR | os.O_CREAT, files.DATA_FILE_MODE)
    with os.fdopen(fd, "r+b") as f:
        before = os.fstat(fd)
        size = f.seek(0, os.SEEK_END)
        good_size, last_line = read_tail(f, size)
        last = last_ts_of(last_line)
        if last is None or last < bars[0][0]:
            trusted = known if known is not None and size > 0 and known.matches(before) else None
            rows = 0 if size == 0 else trusted.rows if trusted is not None else None
            first = trusted.first if trusted is not None and trusted.first is not None else bars[0][0]
            try:
                append_rows(f, size, good_size, bars)
            except OSError:
                if good_size == 0:  # not even the header fitted: no file rather than an empty one
                    files.remove_quietly(path)
                raise
            if size == 0:
                files.fsync_dir(path.parent)
            return len(bars), None if rows is None else FileStats.of(rows + len(bars), os.fstat(fd), first, bars[-1][0])
    return merge_into(path, bars, known)


def merge_into(path: Path, bars: Sequence[Bar], known: FileStats | None = None) -> tuple[int, FileStats]:
    """merge_rewrite, also returning the new file's stats (``known``: what the coverage record says
    of the file, used for its row count while it still describes it).

    Works on the file's lines as bytes, through a read-only map: the stored lines before and after
    the new bars' span are found by binary search (the file is in time order) and copied into the
    new file by the kernel (files.FileSpan), neither read into memory nor parsed; only the stored
    lines inside the span are parsed and merged with the new ones. A backfill (all new bars before
    the first stored one) is then the new lines plus one kernel copy of the old ones, whatever the
    file's size. A file that is not in our canonical order is merged row by row."""
    import mmap

    from ktrdr_collect.storage.columns import as_columns  # numpy: only where bars are written

    cols = as_columns(bars)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_size == 0:
            return _merge_rows(path, bars)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            head = data.find(b"\n") + 1 if data[:1].isalpha() else 0
            good = data.rfind(b"\n") + 1
            if head == 0 and data[:1].isalpha():  # a header without its line end
                return _merge_rows(path, bars)
            try:
                i = _first_line_from(data, head, good, cols.first)
                j = _first_line_from(data, i, good, cols.last + 1)
                stored = data[i:j]
                inside, written = _merge_lines(stored, cols)
                first = _ts_at(data, head) if i > head else cols.first
                last = _ts_at(data, max(j, data.rfind(b"\n", j, good - 1) + 1)) if j < good else cols.last
            except ValueError:
                return _merge_rows(path, bars)
            if known is not None and known.matches(st) and good == st.st_size:
                rows = known.rows - stored.count(b"\n") + inside.count(b"\n")
            else:
                rows = _count_lines(data, head, i) + inside.count(b"\n") + _count_lines(data, j, good)
            parts = [HEADER.encode(), files.FileSpan(f.fileno(), head, i - head), inside,
                     files.FileSpan(f.fileno(), j, good - j)]
            files.atomic_write(path, parts, mode=files.DATA_FILE_MODE, durable=True)
    return written, FileStats.of(rows, os.stat(path), first, last)


def _count_lines(data: bytes | mmap.mmap, start: int, end: int) -> int:
    """Line ends in ``data[start:end]``, 1 MiB at a time (a map is never copied whole)."""
    return sum(data[k: min(k + _COUNT_CHUNK, end)].count(b"\n") for k in range(start, end, _COUNT_CHUNK))


def _ts_at(data: bytes | mmap.mmap, start: int) -> int:
    """The bar time of the line starting at ``start`` (ValueError if it holds no bar)."""
    end = data.find(b",", start, data.find(b"\n", start))
    if end < 0:
        raise ValueError("not a bar line")
    return parse_ts(data[start:end].decode("ascii"))


def _first_line_from(data: bytes | mmap.mmap, lo: int, hi: int, ts: int) -> int:
    """Offset of the first line in ``data[lo:hi]`` (complete lines, in time order, ``lo`` a line's
    start) whose bar is at or after ``ts``; ``hi`` if none is. O(log lines) lines parsed."""
    while lo < hi:  # lines before lo are before ts; lines from hi are not
        mid = data.rfind(b"\n", lo, (lo + hi) // 2) + 1
        if mid <= lo:  # the middle falls in the line at lo: decide that line
            if _ts_at(data, lo) >= ts:
                return lo
            lo = data.find(b"\n", lo) + 1
        elif _ts_at(data, mid) < ts:
            lo = data.find(b"\n", mid) + 1
        else:
            hi = mid
    return lo


def _merge_lines(stored: bytes, cols: Columns) -> tuple[bytes, int]:
    """The stored lines of the new bars' span merged with the new bars (new ones win on equal
    times), and how many new bars are not stored exactly so."""
    new = csv_text(cols)
    if not stored:
        return new, len(cols)
    old: dict[int, bytes] = {}
    for line in stored.splitlines(keepends=True):
        old[_ts_at(line, 0)] = line
    written = 0
    for ts, line in zip(cols.ts.tolist(), new.splitlines(keepends=True), strict=True):
        before = old.get(ts)
        if before != line and (before is None or parse_row(before.decode().rstrip("\r\n")) != parse_row(
                line.decode().rstrip("\n"))):
            written += 1
        old[ts] = line
    if not all(b.endswith(b"\n") for b in old.values()):
        raise ValueError("a line without its end")
    return b"".join(old[ts] for ts in sorted(old)), written


def _merge_rows(path: Path, bars: Sequence[Bar]) -> tuple[int, FileStats]:
    """Any file: every row parsed, merged by time, written back sorted."""
    with open(path, encoding="utf-8", newline="") as f:
        merged = {bar[0]: bar for bar in parse_lines(iter(f), None, None)}
    written = changed_rows(merged, bars)
    merged.update((bar[0], tuple(bar)) for bar in bars)
    stamps = sorted(merged)
    write_csv(path, [merged[ts] for ts in stamps])
    return written, FileStats.of(len(stamps), os.stat(path), stamps[0], stamps[-1])


def erase_rows(path: Path, start: int | None, end: int | None) -> int:
    """Drop the rows in ``[start, end)`` (all rows and the file itself without bounds)."""
    if start is None and end is None:
        rows = count_rows(path)
        if os.path.lexists(path):
            files.refuse_symlink(path)
            files.remove_quietly(path)
            files.fsync_dir(path.parent)
        return rows
    try:
        with open(path, encoding="utf-8", newline="") as f:
            bars = parse_lines(iter(f), None, None)
    except FileNotFoundError:
        return 0
    kept = series.outside(bars, start, end)
    if len(kept) != len(bars):
        write_csv(path, kept)
    return len(bars) - len(kept)


def append_rows(f: IO[bytes], size: int, good_size: int, bars: Sequence[Bar]) -> None:
    """Append after the last complete line, dropping a torn one; write the header if needed. On any
    error (a full disk) the file is cut back to its complete lines: never half a segment."""
    text = csv_text(bars)
    if good_size == 0:
        text = HEADER.encode() + text
    fd = f.fileno()
    try:
        if good_size != size:
            os.ftruncate(fd, good_size)
        files.write_all(fd, text, offset=good_size)
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, good_size)
        raise


def merge_rewrite(path: Path, bars: Sequence[Bar]) -> int:
    """Merge ``bars`` into the file (new bars win on equal timestamps) and replace it atomically;
    returns how many rows were added or changed."""
    return merge_into(path, bars)[0]


def write_csv(path: Path, bars: Sequence[Bar]) -> None:
    """Replace the data file with ``bars``, durably (files.atomic_write: the old file survives any error)."""
    files.atomic_write(path, HEADER.encode() + csv_text(bars), mode=files.DATA_FILE_MODE, durable=True)
