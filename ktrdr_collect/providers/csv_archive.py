"""`csv`: bring existing CSV archives in as a job (no network).

For symbol S (file stem F = `S` upper-cased, `_` -> `%5F`, `/` -> `_`; then, for a symbol with `_`,
the name older versions and other tools give it: both as `_`) and timeframe T, the first of these found
under the `path` folder is read:

1. `<path>/<provider>/<T>/<F>.csv`   a data folder of ours (or any folder laid out the same way)
2. `<path>/<F>_<T>.csv`              ktrdr's `<SYMBOL>_<timeframe>.csv`
3. `<path>/<F>.csv`                  one file per symbol (ours, or plain `date,open,...` daily files)

File names match case-insensitively. The first column is the time (`timestamp`, `date`,
`datetime`, `time` or unnamed, as pandas writes an index); `open, high, low, close` and optionally
`volume` are found by name, any case, other columns ignored. Times are ISO 8601 (`...Z`, an
offset, or `YYYY-MM-DD HH:MM:SS` taken as UTC) or bare dates (00:00 UTC). Each file is parsed
once per job and kept in memory while the job runs.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.providers.base import (
    Bar,
    Interrupt,
    OptionSpec,
    PermanentError,
    Provider,
    UnknownSymbolError,
)
from ktrdr_collect.storage.calendar import AlwaysOpenCalendar, weekday_of
from ktrdr_collect.storage.paths import UNDERSCORE, file_stem
from ktrdr_collect.storage.timeframes import DAY, TIMEFRAMES, format_ts, timeframe_seconds

TIME_COLUMNS = ("timestamp", "date", "datetime", "time", "")
PRICE_COLUMNS = ("open", "high", "low", "close")
CACHE_FILES = 64
"""Parsed files kept in memory (a job reads each symbol's file once per gap)."""
UNLIMITED_BARS = 1_000_000_000


EPOCH_DATE = date(1970, 1, 1)


@dataclass(frozen=True)
class ParsedFile:
    bars: list[Bar]
    dates_only: bool
    """Every time value was a bare date: daily data."""
    times: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, bars: list[Bar], dates_only: bool) -> ParsedFile:
        return cls(bars, dates_only, [b[0] for b in bars])


class Columns:
    """Where the time and OHLCV values are in a file's rows, from its header line."""

    def __init__(self, header: str, where: str) -> None:
        names = [n.strip().strip('"').strip("'").lower() for n in header.lstrip("\ufeff").rstrip("\r\n").split(",")]
        if names[0] in TIME_COLUMNS:
            self.time = 0
        else:
            found = [i for i, n in enumerate(names) if n in TIME_COLUMNS[:-1]]
            if not found:
                raise PermanentError(f"{where} line 1: no time column (timestamp, date, datetime or time) "
                                     f"in header {header.strip()!r}")
            self.time = found[0]
        missing = [c for c in PRICE_COLUMNS if c not in names]
        if missing:
            raise PermanentError(f"{where} line 1: header lacks {', '.join(missing)} (got {header.strip()!r})")
        self.prices = [names.index(c) for c in PRICE_COLUMNS]
        self.volume = names.index("volume") if "volume" in names else None
        self.width = max([self.time, *self.prices, self.volume or 0]) + 1


def parse_time(text: str) -> tuple[int, bool]:
    """A time value -> (epoch seconds, whether it was a bare date); ValueError if unreadable."""
    text = text.strip().strip('"')
    if len(text) == 10:
        return int(datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()), True
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp()), False


def parse_number(text: str, column: str) -> float:
    try:
        value = float(text.strip().strip('"'))
    except ValueError:
        raise ValueError(f"{column} is not a number: {text.strip()!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{column} is not a finite number: {text.strip()!r}")
    return value


def parse_row(fields: list[str], cols: Columns) -> tuple[Bar, bool]:
    if len(fields) < cols.width:
        raise ValueError(f"expected at least {cols.width} fields, got {len(fields)}")
    try:
        ts, dates_only = parse_time(fields[cols.time])
    except ValueError:
        raise ValueError(f"unreadable time {fields[cols.time].strip()!r}") from None
    o, h, low, c = (parse_number(fields[i], name) for i, name in zip(cols.prices, PRICE_COLUMNS, strict=True))
    volume = 0.0
    if cols.volume is not None and fields[cols.volume].strip():
        volume = max(0.0, parse_number(fields[cols.volume], "volume"))  # ktrdr writes -1: no volume
    if h < low:
        raise ValueError("high < low")
    return (ts, o, h, low, c, volume), dates_only


def parse_file(path: Path) -> ParsedFile:
    """Every bar of a CSV file, ascending; PermanentError naming the file and line on bad input."""
    where = path.name
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise PermanentError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return ParsedFile.of([], False)
    cols = Columns(lines[first], where)
    by_ts: dict[int, tuple[Bar, int]] = {}
    dates_only = True
    for number, line in enumerate(lines[first + 1:], start=first + 2):
        if not line.strip():
            continue
        try:
            bar, is_date = parse_row(line.split(","), cols)
        except ValueError as e:
            raise PermanentError(f"{where} line {number}: {e}") from None
        dates_only = dates_only and is_date
        if bar[0] in by_ts and by_ts[bar[0]][0] != bar:
            raise PermanentError(f"{where} line {number}: duplicate time {format_ts(bar[0])} "
                                 f"(also on line {by_ts[bar[0]][1]})")
        by_ts[bar[0]] = (bar, number)
    bars = [by_ts[ts][0] for ts in sorted(by_ts)]
    return ParsedFile.of(bars, dates_only and bool(bars))


def check_timeframe(parsed: ParsedFile, timeframe: str, where: str) -> None:
    """Refuse a file whose bars are closer together than the timeframe asked for."""
    if parsed.dates_only and timeframe_seconds(timeframe) < DAY:
        raise PermanentError(f"{where} holds daily bars (dates without a time): collect it with -t 1d")
    step = timeframe_seconds(timeframe)
    slack = 3600 if step >= DAY else 0  # daily bars at a local open move an hour with DST
    times = parsed.times
    for a, b in zip(times, times[1:], strict=False):
        if b - a < step - slack:
            raise PermanentError(f"{where} has bars {b - a}s apart ({format_ts(a)}, {format_ts(b)}), "
                                 f"finer than {timeframe}: pick the timeframe the file holds with -t")


def to_session_dates(parsed: ParsedFile, timeframe: str, tz: ZoneInfo, where: str) -> ParsedFile:
    """Daily and weekly bars at 00:00Z of their date in `tz` (weekly: of the week's Monday), as
    every provider stores them; an archive stamped at an exchange's open becomes session dates."""
    if timeframe not in ("1d", "1w") or all(ts % DAY == 0 for ts in parsed.times):
        return parsed
    moved: dict[int, Bar] = {}
    for bar in parsed.bars:
        day = (datetime.fromtimestamp(bar[0], tz).date() - EPOCH_DATE).days
        if timeframe == "1w":
            day -= weekday_of(day)
        if day * DAY in moved:
            raise PermanentError(f"{where}: two {timeframe} bars fall on {format_ts(day * DAY)[:10]} in {tz.key} "
                                 "(set -o tz= to the time zone of the file's dates)")
        moved[day * DAY] = (day * DAY, *bar[1:])  # type: ignore[assignment]
    return ParsedFile.of([moved[ts] for ts in sorted(moved)], parsed.dates_only)


class Folder:
    """Case-insensitive file lookup in one folder, listed once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._names: dict[str, Path] | None = None

    def find(self, name: str) -> Path | None:
        if self._names is None:
            try:
                self._names = {p.name.lower(): p for p in self.path.iterdir() if p.is_file()}
            except OSError:
                self._names = {}
        return self._names.get(name.lower())


class CsvArchiveProvider(Provider):
    name = "csv"
    description = "Import existing CSV archives from a folder (ours, ktrdr's SYMBOL_tf.csv, plain daily files)"
    timeframes = TIMEFRAMES
    option_specs = (
        OptionSpec("path", str, "", "the folder holding the CSV files (required)"),
        OptionSpec("source", str, "", "in <path>/<provider>/<tf>/ layouts: which provider folder to read"),
        OptionSpec("tz", str, "UTC", "time zone of the dates of daily/weekly bars not stamped at 00:00Z "
                   "(e.g. America/New_York for files stamped at the New York open)"),
    )
    max_bars = UNLIMITED_BARS
    rate_limit = None

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        raw = self.options["path"].strip()
        if not raw:
            raise ProviderUnavailableError("provider csv needs the archive folder: -o path=FOLDER")
        root = Path(raw).expanduser().resolve()
        if not root.is_dir():
            raise ProviderUnavailableError(f"provider csv: path {root} is not a folder")
        self.options["path"] = str(root)  # the runner may run elsewhere: store it absolute
        self.root = root
        try:
            self.tz = ZoneInfo(self.options["tz"])
        except (KeyError, ValueError):
            raise ProviderUnavailableError(f"provider csv: unknown time zone '{self.options['tz']}'") from None
        self.calendar = AlwaysOpenCalendar()
        self._folders: dict[Path, Folder] = {}
        self._providers: list[Path] | None = None
        self._cache: OrderedDict[tuple[Path, str], ParsedFile] = OrderedDict()
        self._lock = threading.Lock()

    def earliest(self, timeframe: str) -> int:
        return 0

    def _folder(self, path: Path) -> Folder:
        with self._lock:
            return self._folders.setdefault(path, Folder(path))

    def _provider_dirs(self) -> list[Path]:
        """The folders that may hold a `<provider>/<tf>/` layout (listed once)."""
        with self._lock:
            if self._providers is None:
                source = self.options["source"].strip()
                if source:
                    self._providers = [self.root / source]
                else:
                    try:
                        self._providers = sorted(
                            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
                    except OSError:
                        self._providers = []
            return self._providers

    def _layout_candidates(self, stem: str, timeframe: str) -> list[Path]:
        found = (self._folder(p / timeframe).find(f"{stem}.csv") for p in self._provider_dirs())
        return [p for p in found if p is not None]

    def _stem(self, symbol: str) -> str:
        try:
            return file_stem(symbol)
        except ValueError as e:
            raise UnknownSymbolError(str(e)) from None

    def _find(self, stem: str, timeframe: str) -> Path | None:
        """Our name for the symbol first, then the one older versions and other tools give a `_` symbol."""
        for name in dict.fromkeys((stem, stem.replace(UNDERSCORE, "_"))):
            found = self._find_named(name, timeframe)
            if found is not None:
                return found
        return None

    def _find_named(self, stem: str, timeframe: str) -> Path | None:
        layout = self._layout_candidates(stem, timeframe)
        if len(layout) > 1:
            names = ", ".join(p.parent.parent.name for p in layout)
            raise PermanentError(f"{stem}.csv for {timeframe} is under several providers in {self.root} "
                                 f"({names}): choose one with -o source=NAME")
        if layout:
            return layout[0]
        top = self._folder(self.root)
        return top.find(f"{stem}_{timeframe}.csv") or top.find(f"{stem}.csv")

    def _unknown(self, symbol: str, stem: str, timeframe: str) -> UnknownSymbolError:
        return UnknownSymbolError(
            f"no CSV file for {symbol} in {self.root} (looked for <provider>/{timeframe}/{stem}.csv, "
            f"{stem}_{timeframe}.csv and {stem}.csv)"
        )

    def locate(self, symbol: str, timeframe: str) -> Path:
        """The file holding `symbol` at `timeframe`; UnknownSymbolError if there is none."""
        stem = self._stem(symbol)
        found = self._find(stem, timeframe)
        if found is None:
            raise self._unknown(symbol, stem, timeframe)
        return found

    def load(self, symbol: str, timeframe: str) -> ParsedFile:
        path = self.locate(symbol, timeframe)
        key = (path, timeframe)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        parsed = parse_file(path)
        check_timeframe(parsed, timeframe, path.name)
        parsed = to_session_dates(parsed, timeframe, self.tz, path.name)
        with self._lock:
            self._cache[key] = parsed
            while len(self._cache) > CACHE_FILES:
                self._cache.popitem(last=False)
        return parsed

    def validate(self, symbol: str) -> None:
        """Known if a file exists for any timeframe (fetch then looks for the job's timeframe)."""
        stem = self._stem(symbol)
        if not any(self._find(stem, tf) for tf in TIMEFRAMES):
            raise self._unknown(symbol, stem, "<tf>")

    def head_timestamp(self, symbol: str, timeframe: str, interrupt: Interrupt | None = None) -> int:
        bars = self.load(symbol, timeframe).bars
        return bars[0][0] if bars else int(time.time())

    def fetch(self, symbol: str, timeframe: str, start: int, end: int, interrupt: Interrupt) -> list[Bar]:
        parsed = self.load(symbol, timeframe)
        times = parsed.times
        return parsed.bars[bisect_left(times, start):bisect_left(times, end)]
