"""Exchanges: a time zone, regular hours and trading weekdays, plus (when the optional
`exchange_calendars` package is installed) the exchange's own sessions, holidays and early closes.

A provider maps each symbol to an `Exchange`; `calendar_of(exchange)` gives the calendar the engine
plans requests with. Daily bars are stamped at 00:00:00Z of the exchange's session date and weekly
bars at 00:00:00Z of the Monday of the session week, whatever the exchange's time zone.

Without `exchange_calendars` (or for dates it does not cover, or an exchange it does not know) the
calendar is the exchange's regular weekdays and hours in its own time zone: never another
exchange's. Its hours are the widest the exchange has kept in recent decades, so a session is never
skipped as closed when it was open; at worst a request for a holiday comes back empty.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
import warnings
from dataclasses import dataclass
from datetime import date
from functools import lru_cache

from ktrdr_collect.storage.calendar import AlwaysOpenCalendar, RunCalendar, SessionCalendar

log = logging.getLogger("ktrdr_collect.storage")

WEEKDAYS = frozenset(range(5))
SUN_TO_THU = frozenset({6, 0, 1, 2, 3})
SUN_TO_FRI = frozenset({6, 0, 1, 2, 3, 4})
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_XCALS_START = "1990-01-01"
_LOADING = threading.Lock()  # one load at a time: warnings filters are process-wide


@dataclass(frozen=True)
class Exchange:
    """Where a symbol trades: enough to know its session dates and hours."""

    key: str
    """Our name for it: the ISO 10383 MIC where there is one (XNYS, XSHG ...), else FX, CRYPTO, ..."""
    tz: str
    open: str = "00:00"
    close: str = "23:59:59"
    weekdays: frozenset[int] = WEEKDAYS
    xcals: str | None = None
    """The exchange_calendars code for holidays and early closes (None: weekdays only)."""
    always_open: bool = False

    @property
    def describe(self) -> str:
        if self.always_open:
            return f"{self.key} (24/7, {self.tz})"
        return f"{self.key} ({self.tz} {self.open}-{self.close})"


def _x(key: str, tz: str, open_: str, close: str, weekdays: frozenset[int] = WEEKDAYS,
       xcals: str | None = "") -> Exchange:
    return Exchange(key, tz, open_, close, weekdays, key if xcals == "" else xcals)


EXCHANGES: dict[str, Exchange] = {e.key: e for e in (
    _x("XNYS", "America/New_York", "09:30", "16:00"),
    _x("XTSE", "America/Toronto", "09:30", "16:00"),
    _x("BVMF", "America/Sao_Paulo", "10:00", "18:00"),
    _x("XMEX", "America/Mexico_City", "08:30", "15:00"),
    _x("XLON", "Europe/London", "08:00", "16:30"),
    _x("XDUB", "Europe/Dublin", "08:00", "16:30"),
    _x("XETR", "Europe/Berlin", "09:00", "17:30"),
    _x("XFRA", "Europe/Berlin", "08:00", "22:00"),
    _x("XPAR", "Europe/Paris", "09:00", "17:30"),
    _x("XAMS", "Europe/Amsterdam", "09:00", "17:30"),
    _x("XBRU", "Europe/Brussels", "09:00", "17:30"),
    _x("XLIS", "Europe/Lisbon", "08:00", "16:30"),
    _x("XMIL", "Europe/Rome", "09:00", "17:30"),
    _x("XMAD", "Europe/Madrid", "09:00", "17:30"),
    _x("XSWX", "Europe/Zurich", "09:00", "17:30"),
    _x("XWBO", "Europe/Vienna", "09:00", "17:30"),
    _x("XCSE", "Europe/Copenhagen", "09:00", "17:00"),
    _x("XSTO", "Europe/Stockholm", "09:00", "17:30"),
    _x("XHEL", "Europe/Helsinki", "10:00", "18:30"),
    _x("XOSL", "Europe/Oslo", "09:00", "16:30"),
    _x("XJSE", "Africa/Johannesburg", "09:00", "17:00"),
    _x("XSAU", "Asia/Riyadh", "10:00", "15:20", SUN_TO_THU),
    _x("XTAE", "Asia/Jerusalem", "09:30", "17:30", SUN_TO_FRI, None),  # Sun-Thu until 2026, Mon-Fri since
    _x("XBOM", "Asia/Kolkata", "09:15", "15:30"),
    _x("XIDX", "Asia/Jakarta", "09:00", "16:15"),
    _x("XSES", "Asia/Singapore", "09:00", "17:00"),
    _x("XKLS", "Asia/Kuala_Lumpur", "09:00", "17:00"),
    _x("XBKK", "Asia/Bangkok", "10:00", "16:40"),
    _x("XSHG", "Asia/Shanghai", "09:30", "15:00"),
    _x("XSHE", "Asia/Shanghai", "09:30", "15:00"),
    _x("XHKG", "Asia/Hong_Kong", "09:30", "16:10"),
    _x("XTAI", "Asia/Taipei", "09:00", "13:30"),
    _x("XKRX", "Asia/Seoul", "09:00", "15:30"),
    _x("XTKS", "Asia/Tokyo", "09:00", "15:30"),
    _x("XASX", "Australia/Sydney", "10:00", "16:15"),
    _x("XNZE", "Pacific/Auckland", "10:00", "16:45"),
    # Around the clock: FX in London's day (Yahoo's convention), futures in New York's, crypto in UTC.
    Exchange("FX", "Europe/London", weekdays=SUN_TO_FRI),
    Exchange("FUTURES", "America/New_York", weekdays=SUN_TO_FRI),
    Exchange("CRYPTO", "UTC", always_open=True),
    Exchange("UNKNOWN", "UTC", always_open=True),
)}
UNKNOWN = EXCHANGES["UNKNOWN"]
"""An exchange we know nothing of: every day and hour may have bars (no range is ever skipped)."""


def exchange_calendars_installed() -> bool:
    return importlib.util.find_spec("exchange_calendars") is not None


@lru_cache(maxsize=64)
def exchange_sessions(code: str) -> dict[int, tuple[int, int]] | None:
    """The exchange's sessions from exchange_calendars as {day number: (open, close) epoch seconds},
    or None when the package is missing or does not know (or cannot build) that exchange."""
    try:
        xcals = importlib.import_module("exchange_calendars")
    except ImportError:
        return None
    cal = None
    with _LOADING, warnings.catch_warnings():  # the package's own pandas deprecation warnings
        warnings.simplefilter("ignore")
        for kwargs in ({"start": _XCALS_START}, {}):
            try:
                cal = xcals.get_calendar(code, **kwargs)
                break
            except Exception as e:  # unknown code, or a calendar the package cannot build for that span
                log.debug("exchange_calendars %s %s: %s", code, kwargs, e)
        if cal is None:
            return None
        schedule = cal.schedule
        days = [d.date().toordinal() - _EPOCH_ORDINAL for d in schedule.index.tolist()]
        opens = [int(x.timestamp()) for x in schedule["open"].tolist()]
        closes = [int(x.timestamp()) for x in schedule["close"].tolist()]
    return dict(zip(days, zip(opens, closes, strict=True), strict=True))


@lru_cache(maxsize=256)
def calendar_of(exchange: Exchange, use_exchange_calendars: bool = True, first: int | None = None) -> RunCalendar:
    """The calendar for `exchange`: its own sessions when exchange_calendars knows them, else its
    weekdays and regular hours in its own time zone."""
    if exchange.always_open:
        return AlwaysOpenCalendar(first=first)
    sessions = None
    if use_exchange_calendars and exchange.xcals:
        sessions = exchange_sessions(exchange.xcals)
    return SessionCalendar(tz=exchange.tz, session_open=exchange.open, session_close=exchange.close,
                           weekdays=exchange.weekdays, first=first, sessions=sessions)
