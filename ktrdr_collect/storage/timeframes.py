"""Timeframe names and fast conversion between epoch seconds (UTC) and ISO 8601 text."""

from __future__ import annotations

import operator
import re
import time
from datetime import UTC, date, datetime
from functools import lru_cache

TIMEFRAMES: tuple[str, ...] = ("1m", "5m", "15m", "30m", "1h", "4h", "1d", "1w")

DAY = 86_400
WEEK = 7 * DAY

_SECONDS: dict[str, int] = {
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "4h": 4 * 3600,
    "1d": DAY,
    "1w": WEEK,
}

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_FAST_TS = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})(?:T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:Z|\+00:00))?")


def timeframe_seconds(tf: str) -> int:
    """Length of one bar of timeframe ``tf`` in seconds (``1w`` is 7 days)."""
    try:
        return _SECONDS[tf]
    except KeyError:
        raise ValueError(f"unknown timeframe {tf!r}; expected one of {', '.join(TIMEFRAMES)}") from None


def is_intraday(tf: str) -> bool:
    """True for timeframes shorter than a day (1m .. 4h)."""
    return timeframe_seconds(tf) < DAY


@lru_cache(maxsize=8192)
def _date_prefix(day: int) -> str:
    return time.strftime("%Y-%m-%dT", time.gmtime(day * DAY))


@lru_cache(maxsize=DAY)
def _clock_text(sec: int) -> str:
    hour, rest = divmod(sec, 3600)
    minute, second = divmod(rest, 60)
    return f"{hour:02d}:{minute:02d}:{second:02d}Z"


def format_ts(ts: int) -> str:
    """Epoch seconds -> ``"2024-01-02T14:30:00Z"``."""
    day, sec = divmod(operator.index(ts), DAY)
    return _date_prefix(day) + _clock_text(sec)


@lru_cache(maxsize=8192)
def _date_seconds(text: str) -> int:
    day = date.fromisoformat(text)
    return (day.toordinal() - _EPOCH_ORDINAL) * DAY


_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])")


@lru_cache(maxsize=DAY)
def _clock_seconds(text: str) -> int:
    match = _CLOCK.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid time of day {text!r}")
    hour, minute, second = match.groups()
    return int(hour) * 3600 + int(minute) * 60 + int(second)


def parse_ts(text: str) -> int:
    """ISO 8601 text -> epoch seconds.

    Accepts ``YYYY-MM-DDTHH:MM:SSZ``, the ``+00:00`` suffix, a bare date (00:00 UTC), and, on a
    slower path, anything ``datetime.fromisoformat`` reads (other offsets are converted; a time
    without an offset is taken as UTC). Fractional seconds are rejected.
    """
    if len(text) == 20 and text[10] == "T" and text[19] == "Z":
        return _date_seconds(text[:10]) + _clock_seconds(text[11:19])
    text = text.strip()
    match = _FAST_TS.fullmatch(text)
    if match is None:
        return _parse_slow(text)
    day_text, hh, mm, ss = match.groups()
    base = _date_seconds(day_text)
    if hh is None:
        return base
    return base + _clock_seconds(f"{hh}:{mm}:{ss}")


def _parse_slow(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid timestamp {text!r}") from None
    if moment.microsecond:
        raise ValueError(f"timestamp {text!r} has fractional seconds")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())
