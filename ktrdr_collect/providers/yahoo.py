"""`yahoo`: Yahoo Finance's v8 chart API (stocks, ETFs, indices; no key).

`GET {base_url}/v8/finance/chart/{SYMBOL}?period1=s&period2=s&interval=1d&includePrePost=false`
answers `chart.result[0]` with `timestamp` and `indicators.quote[0]` arrays (open, high, low,
close, volume) that may hold nulls, or `chart.error` (404 unknown symbol, 422 window refused).

Bars follow the NYSE session (America/New_York, 09:30-16:00); 1d bars are stamped at the session
open, 1w bars at Monday's open. Holidays come from the optional `exchange_calendars` package
(`pip install 'ktrdr-collect[yahoo]'`); without it every weekday is taken as a trading day, which
only costs a few requests that return nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Callable, Mapping
from datetime import date, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.providers.base import (
    Bar,
    Interrupt,
    OptionSpec,
    PermanentError,
    Provider,
    ProviderError,
    TransientError,
    UnknownSymbolError,
)
from ktrdr_collect.providers.http import BROWSER_USER_AGENT, HttpFailure, RequestCancelled, get_json
from ktrdr_collect.storage.calendar import SessionCalendar, day_number, weekday_of
from ktrdr_collect.storage.timeframes import DAY, format_ts

INTERVALS = {"1m": "1m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "60m", "1d": "1d", "1w": "1wk"}
TZ, OPEN, CLOSE = "America/New_York", "09:30", "16:00"
EARLIEST_DAILY = -1_577_923_200  # 1920-01-01T00:00:00Z: before Yahoo's oldest daily bars (^GSPC, 1927)
HISTORY_DAYS = {"1m": 30, "5m": 60, "15m": 60, "30m": 60, "1h": 730}
"""How far back Yahoo serves each intraday timeframe."""
REQUEST_DAYS_1M = 7
"""Yahoo refuses 1m requests spanning more than 8 days; fetch splits longer windows into 7-day calls."""
BARS_PER_SESSION = 390
HAS_EXCHANGE_CALENDARS = importlib.util.find_spec("exchange_calendars") is not None
INSTALL_HINT = "pip install 'ktrdr-collect[yahoo]'"
_MARGIN_S = 3600


@lru_cache(maxsize=1)
def nyse_holidays(start_year: int = 1990) -> frozenset[date]:
    """NYSE weekday closures from exchange_calendars (ProviderUnavailableError if not installed)."""
    try:
        xcals = importlib.import_module("exchange_calendars")
    except ImportError:
        raise ProviderUnavailableError(f"provider yahoo: holidays need exchange_calendars: {INSTALL_HINT}") from None
    cal = xcals.get_calendar("XNYS", start=f"{max(start_year, 1990)}-01-01")
    sessions = {ts.date() for ts in cal.sessions}
    first, last = min(sessions), max(sessions)
    days = (date.fromordinal(n) for n in range(first.toordinal(), last.toordinal() + 1))
    return frozenset(d for d in days if d.weekday() < 5 and d not in sessions)


def make_calendar(holidays: str) -> SessionCalendar:
    if holidays not in ("auto", "on", "off"):
        raise ProviderUnavailableError(f"provider yahoo: holidays must be auto, on or off, not '{holidays}'")
    use = holidays == "on" or (holidays == "auto" and HAS_EXCHANGE_CALENDARS)
    closed = nyse_holidays() if use else frozenset()
    return SessionCalendar(tz=TZ, session_open=OPEN, session_close=CLOSE, holidays=closed, daily_at="open",
                           first=EARLIEST_DAILY)


def classify(failure: HttpFailure) -> ProviderError | None:
    """`{"chart": {"result": null, "error": {"code": "Not Found", "description": "..."}}}`."""
    error = chart_error(failure.body)
    if error is None:
        return None
    code, text = error
    if failure.status == 404 or code == "Not Found":
        return UnknownSymbolError(f"unknown symbol on yahoo: {text}")
    if 400 <= failure.status < 500 and failure.status != 429:
        return PermanentError(f"yahoo refused the request: {text} ({code}, HTTP {failure.status})")
    return None


def chart_error(body: Any) -> tuple[str, str] | None:
    chart = body.get("chart") if isinstance(body, dict) else None
    error = chart.get("error") if isinstance(chart, dict) else None
    if not isinstance(error, dict):
        return None
    return str(error.get("code") or "error"), str(error.get("description") or error.get("code") or "")


def chart_result(body: Any) -> dict[str, Any]:
    error = chart_error(body)
    if error is not None:
        raise PermanentError(f"yahoo: {error[1]} ({error[0]})")
    try:
        result = body["chart"]["result"][0]
    except (KeyError, IndexError, TypeError):
        raise TransientError("yahoo answered without chart.result") from None
    if not isinstance(result, dict):
        raise TransientError("yahoo answered a malformed chart.result")
    return result


def _value(column: list[Any], i: int) -> float | None:
    x = column[i] if i < len(column) else None
    return None if x is None else float(x)


def parse_chart(body: Any) -> list[tuple[int, float, float, float, float, float]]:
    """Bars from a chart response, skipping bars with a null price (volume null -> 0)."""
    result = chart_result(body)
    stamps = result.get("timestamp") or []
    try:
        quote_ = result["indicators"]["quote"][0] or {}
    except (KeyError, IndexError, TypeError):
        quote_ = {}
    columns = [quote_.get(k) or [] for k in ("open", "high", "low", "close", "volume")]
    bars = []
    try:
        for i, ts in enumerate(stamps):
            o, h, low, c, v = (_value(col, i) for col in columns)
            if None in (o, h, low, c):
                continue
            bars.append((int(ts), o, h, low, c, v or 0.0))
    except (TypeError, ValueError):
        raise TransientError("yahoo answered non-numeric quote values") from None
    return bars  # type: ignore[return-value]


class YahooProvider(Provider):
    name = "yahoo"
    description = (
        "Yahoo Finance v8 chart API: stocks, ETFs, indices (NYSE session calendar; "
        + ("NYSE holidays from exchange_calendars)" if HAS_EXCHANGE_CALENDARS
           else f"weekdays only, holidays need exchange_calendars: {INSTALL_HINT})")
    )
    timeframes = ("1m", "5m", "15m", "30m", "1h", "1d", "1w")
    needs_network = True
    option_specs = (
        OptionSpec("base_url", str, "https://query2.finance.yahoo.com", "API root (or a local test server)"),
        OptionSpec("rate_limit", float, 2.0, "requests per second across all jobs on this machine (0: no pacing)"),
        OptionSpec("timeout_s", float, 30.0, "seconds before a request counts as failed (and is retried)"),
        OptionSpec("holidays", str, "auto", "auto|on|off: skip NYSE holidays (needs exchange_calendars)"),
        OptionSpec("user_agent", str, BROWSER_USER_AGENT, "User-Agent header (Yahoo refuses unknown clients)"),
    )
    max_bars = 5000

    def __init__(self, options: Mapping[str, Any] | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(options)
        o = self.options
        if o["timeout_s"] <= 0:
            raise ProviderUnavailableError("provider yahoo: timeout_s must be > 0")
        self.base_url = o["base_url"].rstrip("/")
        self.rate_limit = o["rate_limit"] if o["rate_limit"] > 0 else None
        self.calendar = make_calendar(o["holidays"])
        self.clock = clock

    def max_bars_for(self, timeframe: str) -> int:
        if timeframe == "1m":
            return 5 * BARS_PER_SESSION  # ~a week: one call of at most 8 days (see REQUEST_DAYS_1M)
        return self.max_bars

    def earliest(self, timeframe: str) -> int:
        days = HISTORY_DAYS.get(timeframe)
        if days is None:
            return EARLIEST_DAILY
        return int(self.clock()) - days * DAY + _MARGIN_S

    def check_window(self, timeframe: str, start: int, end: int, now: int) -> None:
        if timeframe not in INTERVALS:
            raise ValueError(f"yahoo has no {timeframe} bars (it has: {' '.join(INTERVALS)})")
        days = HISTORY_DAYS.get(timeframe)
        oldest = now - days * DAY + _MARGIN_S if days is not None else None
        if oldest is not None and start < oldest:  # an hour's margin: the job fetches a little later
            raise ValueError(
                f"yahoo serves {timeframe} bars only for the last {days} days: start must be on or after "
                f"{format_ts(oldest)[:16]}Z (try --days {days - 1} or --start earliest)"
            )

    def _chart(self, symbol: str, timeframe: str, start: int, end: int, interrupt: Interrupt | None) -> Any:
        params = {"period1": start, "period2": end, "interval": INTERVALS[timeframe], "includePrePost": "false"}
        url = f"{self.base_url}/v8/finance/chart/{quote(symbol.upper(), safe='')}"
        return get_json(url, params, self.options["timeout_s"], interrupt,
                        headers={"User-Agent": self.options["user_agent"]}, classify=classify)

    head_timestamp_is_request = True

    def head_timestamp(self, symbol: str, timeframe: str, interrupt: Interrupt | None = None) -> int:
        """`meta.firstTradeDate` from a small daily request, never before what the timeframe allows."""
        now = int(self.clock())
        result = chart_result(self._chart(symbol, "1d", now - 10 * DAY, now, interrupt))
        first = (result.get("meta") or {}).get("firstTradeDate")
        floor = self.earliest(timeframe)
        return max(floor, int(first)) if isinstance(first, int | float) else floor

    def snap(self, timeframe: str, ts: int) -> int:
        """Daily bars at the session open of their New York date, weekly ones at Monday's open."""
        if timeframe not in ("1d", "1w"):
            return ts
        day = local_day(self.calendar, ts)
        if timeframe == "1w":
            day -= weekday_of(day)
        return self.calendar.session(day)[0]

    def windows(self, timeframe: str, start: int, end: int) -> list[tuple[int, int]]:
        if timeframe != "1m":
            return [(start, end)]
        step = REQUEST_DAYS_1M * DAY
        return [(s, min(s + step, end)) for s in range(start, end, step)]

    def fetch(self, symbol: str, timeframe: str, start: int, end: int, interrupt: Interrupt) -> list[Bar]:
        bars: list[Bar] = []
        try:
            for lo, hi in self.windows(timeframe, start, end):
                # a daily bar stamped at the open may be reported at midnight: ask from a day earlier
                ask_from = lo - DAY if timeframe in ("1d", "1w") else lo
                for bar in parse_chart(self._chart(symbol, timeframe, ask_from, hi, interrupt)):
                    ts = self.snap(timeframe, bar[0])
                    if lo <= ts < hi:
                        bars.append((ts, *bar[1:]))
        except RequestCancelled:
            return []
        return sorted(dict((b[0], b) for b in bars).values())


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def local_day(calendar: SessionCalendar, ts: int) -> int:
    """The day number of the trading date a daily bar at `ts` belongs to: its New York date, or
    its UTC date when stamped at UTC midnight (some feeds do; that instant is the evening before
    in New York)."""
    if ts % DAY == 0:
        return day_number(ts)
    return datetime.fromtimestamp(ts, calendar.zone).date().toordinal() - _EPOCH_ORDINAL
