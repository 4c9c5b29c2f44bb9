"""Validation of what users type: symbols, dates, windows, job options."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from ktrdr_collect.errors import InvalidInputError

_SYMBOL = re.compile(r"[A-Za-z0-9^][A-Za-z0-9.\-_^=/]{0,31}")


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


def read_symbol_lines(text: str) -> list[str]:
    """Symbols from a watchlist file: one per line, blank lines and `#` comments ignored."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def parse_datetime(text: str, flag: str) -> datetime:
    """`YYYY-MM-DD` or ISO 8601 date-time; naive values are UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInputError(f"{flag}: cannot parse date '{text}' (use YYYY-MM-DD or ISO 8601)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def resolve_window(
    start: str | None,
    end: str | None,
    days: int | None,
    default_days: int,
    now: datetime,
) -> tuple[datetime | None, datetime]:
    """(start, end) in UTC; start None means `earliest` (the provider's first bar)."""
    if start is not None and days is not None:
        raise InvalidInputError("--start and --days cannot be combined")
    if days is not None and days <= 0:
        raise InvalidInputError(f"--days must be positive, got {days}")
    end_dt = parse_datetime(end, "--end") if end is not None else now
    if start is not None and start.strip().lower() == "earliest":
        return None, end_dt
    if start is not None:
        start_dt = parse_datetime(start, "--start")
    else:
        start_dt = end_dt - timedelta(days=days if days is not None else default_days)
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
    """A WHEN: an age like `30m`, `12h`, `7d`, `2w`, or a date."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if match:
        n, unit = int(match.group(1)), match.group(2)
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit] * n
        return now - timedelta(seconds=seconds)
    return parse_datetime(text, "WHEN")
