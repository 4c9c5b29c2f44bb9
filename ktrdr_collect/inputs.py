"""Validation of what users type: symbols, dates, windows, job options."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from ktrdr_collect.errors import InvalidInputError

_SYMBOL = re.compile(r"[A-Za-z0-9^][A-Za-z0-9.\-_^=/]{0,31}")
EARLIEST_DATE = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_DATE = datetime(2100, 1, 1, tzinfo=UTC)
"""Dates outside [1900-01-01, 2100-01-01] are refused before any job exists: no provider has bars
before 1900, and both bounds keep every date arithmetic far from datetime's limits."""
MAX_DAYS = (LATEST_DATE - EARLIEST_DATE).days


def normalize_symbol(text: str) -> str:
    """Upper-cased symbol, or InvalidInputError for anything that could escape a data folder."""
    if not _SYMBOL.fullmatch(text) or ".." in text:
        raise InvalidInputError(f"invalid symbol '{text}'")
    return text.upper()


def parse_symbols(texts: list[str]) -> list[str]:
    """Validate and normalise, dropping duplicates but keeping the order given."""
    seen: dict[str, None] = {}
    for text in texts:
        seen.setdefault(normalize_symbol(text.strip()), None)
    return list(seen)


def read_symbol_lines(text: str, source: str | None = None) -> list[str]:
    """Symbols from a watchlist file: one or more a line, separated by commas or spaces; blank
    lines and `#` comments ignored. With `source` (the file's name), each is validated here, so an
    error names the file and line: `watchlist.txt line 3: invalid symbol 'A B'`."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        for token in re.split(r"[,\s]+", line.split("#", 1)[0].strip()):
            if not token:
                continue
            if source is not None:
                try:
                    normalize_symbol(token)
                except InvalidInputError as e:
                    raise InvalidInputError(f"{source} line {number}: {e}") from None
            out.append(token)
    return out


def parse_datetime(text: str, flag: str) -> datetime:
    """`YYYY-MM-DD` or ISO 8601 date-time; naive values are UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInputError(f"{flag}: cannot parse date '{text}' (use YYYY-MM-DD or ISO 8601)") from None
    return value


def check_date(value: datetime, flag: str) -> datetime:
    """`value`, or InvalidInputError when it lies outside [EARLIEST_DATE, LATEST_DATE]."""
    if not EARLIEST_DATE <= value <= LATEST_DATE:
        raise InvalidInputError(
            f"{flag}: {value.date().isoformat()} is out of range (dates must be between "
            f"{EARLIEST_DATE.date().isoformat()} and {LATEST_DATE.date().isoformat()})"
        )
    return value


def resolve_window(
    start: str | None,
    end: str | None,
    days: int | None,
    default_days: int,
    now: datetime,
    timeframe: str | None = None,
) -> tuple[datetime | None, datetime]:
    """(start, end) in UTC; start None means `earliest` (the provider's first bar). A start counted
    in days (`--days N`, or the default) for `1d`/`1w` bars begins at 00:00Z of the N-th day (the
    Monday of its week for `1w`), so that day's bar, stamped at 00:00Z, is in the window."""
    if start is not None and days is not None:
        raise InvalidInputError("--start and --days cannot be combined")
    if days is not None and not 0 < days <= MAX_DAYS:
        raise InvalidInputError(f"--days must be positive and at most {MAX_DAYS}, got {days}")
    end_dt = check_date(parse_datetime(end, "--end"), "--end") if end is not None else now
    if start is not None and start.strip().lower() == "earliest":
        return None, end_dt
    if start is not None:
        start_dt = check_date(parse_datetime(start, "--start"), "--start")
    else:
        start_dt = end_dt - timedelta(days=min(days or default_days, MAX_DAYS))
        if timeframe in ("1d", "1w"):
            start_dt = start_dt.replace(hour=0, minute=0, second=0, microsecond=0)
            if timeframe == "1w":
                start_dt -= timedelta(days=start_dt.weekday())
        start_dt = check_date(start_dt, "start")
    if end_dt <= start_dt:
        raise InvalidInputError(
            f"end ({end_dt:%Y-%m-%d %H:%M}) must be after start ({start_dt:%Y-%m-%d %H:%M})"
        )
    return start_dt, end_dt


def parse_options(pairs: list[str]) -> dict[str, str]:
    """`-o KEY=VALUE` pairs into a dict (values stay strings; providers convert them)."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"-o expects KEY=VALUE, got '{pair}'")
        options[key.strip()] = value.strip()
    return options


def parse_age(text: str, now: datetime) -> datetime:
    """A WHEN: an age like `30m`, `12h`, `7d`, `2w` (at most back to 1900), or a date."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if match:
        n, unit = int(match.group(1)), match.group(2)
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit] * n
        if seconds > (now - EARLIEST_DATE).total_seconds():
            raise InvalidInputError(f"WHEN: '{text.strip()}' reaches back before {EARLIEST_DATE:%Y-%m-%d}")
        return now - timedelta(seconds=seconds)
    return parse_datetime(text, "WHEN")
