"""`yahoo`: Yahoo Finance's v8 chart API (stocks, ETFs, indices, FX, futures; no key).

`GET {base_url}/v8/finance/chart/{SYMBOL}?period1=s&period2=s&interval=1d&includePrePost=false&events=div,splits`
answers `chart.result[0]` with `meta` (`exchangeTimezoneName`, `tradingPeriods` for intraday),
`timestamp` and `indicators.quote[0]` arrays (open, high, low, close, volume) that may hold nulls,
`indicators.adjclose[0].adjclose` (daily and weekly), `events.splits` / `events.dividends` (the
actions inside the window), or `chart.error` (404 unknown symbol, 422 window refused). See
docs/providers/yahoo.md.

Prices: Yahoo's OHLC are adjusted for every split up to today (`adjust=splits`, the default);
`adjust=all` also adjusts them for dividends with each bar's `adjclose / close`. It serves no
as-traded prices, so `adjust=none` is refused.

Dates: Yahoo stamps a daily bar at the exchange's local open (local midnight for FX and futures),
so its session date is the *local* date of that instant in `meta.exchangeTimezoneName`; we store
it at 00:00:00Z of that date (weekly bars at 00:00:00Z of the week's Monday). Each symbol is planned
with its own exchange's calendar (yahoo_exchanges), never New York's for a non-US symbol.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.providers import http
from ktrdr_collect.providers.base import (
    MAX_RATE,
    MAX_TIMEOUT_S,
    MIN_RATE,
    Action,
    Bar,
    Interrupt,
    OptionSpec,
    PermanentError,
    Provider,
    ProviderError,
    RateLimitedError,
    TransientError,
    UnknownSymbolError,
)
from ktrdr_collect.providers.http import BROWSER_USER_AGENT, HttpFailure, RequestCancelled
from ktrdr_collect.providers.yahoo_exchanges import exchange_of_symbol
from ktrdr_collect.storage.calendar import Calendar, SessionCalendar, weekday_of
from ktrdr_collect.storage.exchanges import Exchange, calendar_of
from ktrdr_collect.storage.timeframes import DAY, WEEK, format_ts, timeframe_seconds

log = logging.getLogger("ktrdr_collect.providers.yahoo")

INTERVALS = {"1m": "1m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "60m", "1d": "1d", "1w": "1wk"}
EARLIEST_DAILY = -1_577_923_200  # 1920-01-01T00:00:00Z: before Yahoo's oldest daily bars (^GSPC, 1927)
HISTORY_DAYS = {"1m": 30, "5m": 60, "15m": 60, "30m": 60, "1h": 730}
"""How far back Yahoo serves each intraday timeframe."""
REQUEST_DAYS_1M = 7
"""Yahoo refuses 1m requests spanning more than 8 days; fetch splits longer windows into 7-day calls."""
BARS_PER_SESSION = 390
INSTALL_HINT = "pip install 'ktrdr-collect[yahoo]'"
PUBLISH_DELAY_S = 20 * 60
"""Yahoo shows many exchanges' prices 15-20 minutes late: a bar is only asked for 20 min after it ends."""
_MARGIN_S = 3600
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_OLD_TZ = ZoneInfo("America/New_York")  # files written before 0.2 dated daily bars in New York


def has_exchange_calendars() -> bool:
    return importlib.util.find_spec("exchange_calendars") is not None


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_day(ts: int, tz: ZoneInfo) -> int:
    """The day number of the local date of instant `ts` in `tz`."""
    return datetime.fromtimestamp(ts, tz).date().toordinal() - _EPOCH_ORDINAL


def local_midnight(day: int, tz: ZoneInfo) -> int:
    """The instant local date `day` begins in `tz`."""
    return int(datetime.combine(date.fromordinal(day + _EPOCH_ORDINAL), datetime.min.time(), tz).timestamp())


# --- answers ------------------------------------------------------------------------------------


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


def adjclose_column(result: dict[str, Any]) -> list[Any]:
    """`indicators.adjclose[0].adjclose`; PermanentError when the answer has none."""
    try:
        column = result["indicators"]["adjclose"][0]["adjclose"]
    except (KeyError, IndexError, TypeError):
        column = None
    if not isinstance(column, list):
        raise PermanentError("yahoo answered no adjclose, which adjust=all needs")
    return column


def parse_bars(result: dict[str, Any], dividends: bool = False) -> list[Bar]:
    """Bars from a chart result, skipping rows with a null price (halts); null volume -> 0.
    With `dividends`, open, high, low and close are scaled by the row's `adjclose / close`."""
    stamps = result.get("timestamp") or []
    try:
        quote_ = result["indicators"]["quote"][0] or {}
    except (KeyError, IndexError, TypeError):
        quote_ = {}
    columns = [quote_.get(k) or [] for k in ("open", "high", "low", "close", "volume")]
    adjclose = adjclose_column(result) if dividends and stamps else []
    bars: list[Bar] = []
    try:
        for i, ts in enumerate(stamps):
            o, h, low, c, v = (_value(col, i) for col in columns)
            if o is None or h is None or low is None or c is None:
                continue
            if dividends:
                adjusted = _value(adjclose, i)
                if adjusted is None or c == 0:
                    raise PermanentError(f"yahoo answered no adjclose for {format_ts(int(ts))}, which adjust=all needs")
                factor = adjusted / c
                o, h, low, c = o * factor, h * factor, low * factor, adjusted
            bars.append((int(ts), o, h, low, c, v or 0.0))
    except (TypeError, ValueError):
        raise TransientError("yahoo answered non-numeric quote values") from None
    return bars


def _split_ratio(item: Mapping[str, Any]) -> float | None:
    """New shares per old share: `numerator / denominator` (4 / 1 for "4:1"), else `splitRatio`."""
    num, den = item.get("numerator"), item.get("denominator")
    if isinstance(num, int | float) and isinstance(den, int | float) and num > 0 and den > 0:
        return float(num) / float(den)
    text = item.get("splitRatio")
    if isinstance(text, str) and ":" in text:
        a, _, b = text.partition(":")
        try:
            ratio = float(a) / float(b)
        except (ValueError, ZeroDivisionError):
            return None
        return ratio if ratio > 0 and math.isfinite(ratio) else None
    return None


def parse_events(result: dict[str, Any], tz: ZoneInfo) -> list[Action]:
    """Splits and dividends of `events`, each dated 00:00Z of its local session date (like a daily
    bar); an entry that does not parse is skipped."""
    events = result.get("events")
    if not isinstance(events, dict):
        return []
    found: list[Action] = []
    for kind, key in (("split", "splits"), ("dividend", "dividends")):
        entries = events.get(key)
        for item in entries.values() if isinstance(entries, dict) else []:
            if not isinstance(item, dict) or not isinstance(item.get("date"), int | float):
                continue
            value = _split_ratio(item) if kind == "split" else item.get("amount")
            if isinstance(value, int | float) and math.isfinite(value) and value > 0:
                found.append((local_day(int(item["date"]), tz) * DAY, kind, float(value)))
    return sorted(set(found))


def parse_chart(body: Any) -> list[Bar]:
    """Bars from a chart response (as Yahoo stamps them)."""
    return parse_bars(chart_result(body))


def trading_periods(meta: Mapping[str, Any]) -> list[tuple[int, int]]:
    """The regular sessions `meta.tradingPeriods` lists (intraday answers), as (start, end) instants:
    a list of per-day lists with includePrePost=false, or {"pre", "regular", "post"} with it."""
    periods = meta.get("tradingPeriods")
    if isinstance(periods, dict):
        periods = periods.get("regular")
    found: list[tuple[int, int]] = []
    for day in periods if isinstance(periods, list) else []:
        for p in day if isinstance(day, list) else [day]:
            if isinstance(p, dict) and isinstance(p.get("start"), int) and isinstance(p.get("end"), int):
                found.append((p["start"], p["end"]))
    return sorted(found)


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    tz: ZoneInfo
    granularity: str
    sessions: list[tuple[int, int]]
    actions: list[Action]


def read_chart(body: Any, fallback_tz: str, dividends: bool = False) -> Chart:
    result = chart_result(body)
    meta = result.get("meta") or {}
    tz_name = meta.get("exchangeTimezoneName")
    try:
        tz = zone(tz_name) if isinstance(tz_name, str) and tz_name else zone(fallback_tz)
    except (KeyError, ValueError):  # ZoneInfoNotFoundError is a KeyError
        tz = zone(fallback_tz)
    return Chart(parse_bars(result, dividends), tz, str(meta.get("dataGranularity") or ""), trading_periods(meta),
                 parse_events(result, tz))


# --- errors -------------------------------------------------------------------------------------


def classify_for(client: str) -> http.Classifier:
    def classify(failure: HttpFailure) -> ProviderError | None:
        """`{"chart": {"result": null, "error": {"code": "Not Found", "description": "..."}}}`; 429."""
        if failure.status == 429:
            return refused(failure, client)
        error = chart_error(failure.body)
        if error is None:
            return None
        code, text = error
        if failure.status == 404 or code == "Not Found":
            return UnknownSymbolError(f"unknown symbol on yahoo: {text}")
        if 400 <= failure.status < 500:
            return PermanentError(f"yahoo refused the request: {text} ({code}, HTTP {failure.status})")
        return None

    return classify


def refused(failure: HttpFailure, client: str) -> ProviderError:
    """429 from Yahoo. Since 2025 its edge answers 429 to every client that is not a browser (TLS
    fingerprint), so without the browser-grade client waiting never helps: fail at once and say
    what to install. With it, a 429 is a real rate limit: wait (the engine bounds the total)."""
    if client != "browser":
        return PermanentError(
            f"yahoo refused the request ({failure.summary()}): Yahoo blocks clients that are not browsers; "
            f"install the browser-grade client: {INSTALL_HINT}")
    retry_after = http.parse_retry_after(failure.headers.get("Retry-After"))
    return RateLimitedError(f"yahoo is rate limiting this IP ({failure.summary()})", retry_after=retry_after)


# --- the provider -------------------------------------------------------------------------------


class YahooProvider(Provider):
    name = "yahoo"
    description = (
        "Yahoo Finance v8 chart API: stocks, ETFs, indices, FX, futures; each exchange's own calendar"
        + (" with its holidays (exchange_calendars)" if has_exchange_calendars()
           else f" (weekdays only: holidays need exchange_calendars, {INSTALL_HINT})")
    )
    timeframes = ("1m", "5m", "15m", "30m", "1h", "1d", "1w")
    needs_network = True
    option_specs = (
        OptionSpec("base_url", str, "https://query2.finance.yahoo.com", "API root (or a local test server)"),
        OptionSpec("rate_limit", float, 2.0, "requests per second across all jobs on this machine (0: no pacing)",
                   low=MIN_RATE, high=MAX_RATE, zero_off=True),
        OptionSpec("timeout_s", float, 30.0, "seconds before a request counts as failed (and is retried)",
                   above=0, high=MAX_TIMEOUT_S),
        OptionSpec("holidays", str, "auto", "auto|on|off: each exchange's holidays and early closes "
                   "(needs exchange_calendars); off: its weekdays and regular hours only"),
        OptionSpec("client", str, "auto", "auto|browser|stdlib: browser is curl_cffi with Chrome's TLS "
                   "(Yahoo refuses other clients); auto: browser when installed"),
        OptionSpec("user_agent", str, BROWSER_USER_AGENT, "User-Agent header (the browser client sends Chrome's own)"),
        OptionSpec("adjust", str, "splits", "splits|all|none: prices adjusted for splits (Yahoo's own, today's "
                   "scale); all: also for dividends (adjclose, 1d and 1w); none: as traded (Yahoo has none)"),
    )
    max_bars = 5000
    publish_delay_s = PUBLISH_DELAY_S
    legacy_daily_stamps = True

    def __init__(self, options: Mapping[str, Any] | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(options)
        o = self.options
        if o["timeout_s"] <= 0:
            raise ProviderUnavailableError("provider yahoo: timeout_s must be > 0")
        self.base_url = o["base_url"].rstrip("/")
        self.rate_limit = o["rate_limit"] if o["rate_limit"] > 0 else None
        self.use_exchange_calendars = use_exchange_calendars(o["holidays"])
        self.client = choose_client(o["client"])
        self.clock = clock
        self.adjust = adjust_mode(o["adjust"])
        self.adjusted_for = frozenset({"split", "dividend"} if self.adjust == "all" else {"split"})
        self._actions: dict[tuple[str, str], set[Action]] = {}
        self._actions_lock = threading.Lock()
        self._classify = classify_for(self.client)
        # the browser client sends the impersonated Chrome's own User-Agent, matching its TLS and
        # client hints; ours would contradict them (yfinance PR #2452)
        agent = o["user_agent"]
        self._headers = {} if self.client == "browser" and agent == BROWSER_USER_AGENT else {"User-Agent": agent}

    # planning

    def exchange(self, symbol: str) -> Exchange:
        return exchange_of_symbol(symbol)

    @property
    def calendar(self) -> Calendar:  # type: ignore[override]
        """New York's (the calendar of a symbol without an exchange suffix)."""
        return self.calendar_for("AAPL")

    def calendar_for(self, symbol: str) -> Calendar:
        return calendar_of(self.exchange(symbol), self.use_exchange_calendars, EARLIEST_DAILY)

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
        if self.adjust == "all" and timeframe not in ("1d", "1w"):
            raise ValueError(f"adjust=all needs adjclose, which Yahoo serves for 1d and 1w bars only, "
                             f"not {timeframe} (use adjust=splits)")
        days = HISTORY_DAYS.get(timeframe)
        oldest = now - days * DAY + _MARGIN_S if days is not None else None
        if oldest is not None and start < oldest:  # an hour's margin: the job fetches a little later
            raise ValueError(
                f"yahoo serves {timeframe} bars only for the last {days} days: start must be on or after "
                f"{format_ts(oldest)[:16]}Z (try --days {days - 1} or --start earliest)"
            )

    # requests

    def _chart(self, symbol: str, interval: str, start: int, end: int, interrupt: Interrupt | None,
               events: bool = True) -> Any:
        params: dict[str, Any] = {"period1": start, "period2": end, "interval": interval, "includePrePost": "false"}
        if events:
            params["events"] = "div,splits"
        url = f"{self.base_url}/v8/finance/chart/{quote(symbol.upper(), safe='')}"
        return http.get_json(url, params, self.options["timeout_s"], interrupt, client=self.client,
                             headers=self._headers, classify=self._classify)

    head_timestamp_is_request = True

    def head_timestamp(self, symbol: str, timeframe: str, interrupt: Interrupt | None = None) -> int:
        """`meta.firstTradeDate` from a small daily request, never before what the timeframe allows."""
        now = int(self.clock())
        result = chart_result(self._chart(symbol, "1d", now - 10 * DAY, now, interrupt, events=False))
        first = (result.get("meta") or {}).get("firstTradeDate")
        floor = self.earliest(timeframe)
        if not isinstance(first, int | float):
            return floor
        if timeframe in ("1d", "1w"):  # the session date of the first trade, in our stamps
            day = local_day(int(first), zone(self.exchange(symbol).tz))
            first = (day - (weekday_of(day) if timeframe == "1w" else 0)) * DAY
        return max(floor, int(first))

    def fetch(self, symbol: str, timeframe: str, start: int, end: int, interrupt: Interrupt) -> list[Bar]:
        try:
            if timeframe in ("1d", "1w"):
                bars = self._fetch_dated(symbol, timeframe, start, end, interrupt)
            else:
                bars = self._fetch_intraday(symbol, timeframe, start, end, interrupt)
        except RequestCancelled:
            return []
        return sorted(dict((b[0], b) for b in bars).values())

    def _fetch_dated(self, symbol: str, timeframe: str, start: int, end: int, interrupt: Interrupt) -> list[Bar]:
        exchange = self.exchange(symbol)
        period1, period2 = dated_request_window(timeframe, start, end, zone(exchange.tz))
        chart = read_chart(self._chart(symbol, INTERVALS[timeframe], period1, period2, interrupt), exchange.tz,
                           dividends=self.adjust == "all")
        self._note_actions(symbol, timeframe, chart.actions)
        stamped = (restamp(bar, session_stamp(timeframe, bar[0], chart.tz)) for bar in chart.bars)
        return [bar for bar in stamped if start <= bar[0] < end]

    def _fetch_intraday(self, symbol: str, timeframe: str, start: int, end: int, interrupt: Interrupt) -> list[Bar]:
        bars: list[Bar] = []
        for lo, hi in self.windows(timeframe, start, end):
            bars.extend(self._intraday_window(symbol, timeframe, lo, hi, interrupt))
        return bars

    def _intraday_window(self, symbol: str, timeframe: str, lo: int, hi: int, interrupt: Interrupt) -> list[Bar]:
        calendar = self.calendar_for(symbol)
        step = timeframe_seconds(timeframe)
        exchange = self.exchange(symbol)
        chart = read_chart(self._chart(symbol, INTERVALS[timeframe], lo, hi, interrupt), exchange.tz)
        self._note_actions(symbol, timeframe, chart.actions)
        if not granularity_ok(chart, INTERVALS[timeframe], step):
            if timeframe != "30m":
                raise PermanentError(f"yahoo answered {chart.granularity or 'other'} bars for {timeframe}")
            # Yahoo has long answered interval=30m with 60m bars: build 30m bars from 15m ones
            fine = read_chart(self._chart(symbol, "15m", lo, hi, interrupt), exchange.tz)
            if not granularity_ok(fine, "15m", 900):
                raise PermanentError("yahoo answered neither 30m nor 15m bars for a 30m request")
            kept = in_session(fine, calendar, exchange, 900, lo, hi)
            return aggregate(kept, step, sessions_of(fine, calendar, exchange, kept))
        return in_session(chart, calendar, exchange, step, lo, hi)

    # corporate actions

    def _note_actions(self, symbol: str, timeframe: str, actions: list[Action]) -> None:
        if actions:
            with self._actions_lock:
                self._actions.setdefault((symbol, timeframe), set()).update(actions)

    def take_actions(self, symbol: str, timeframe: str) -> list[Action]:
        with self._actions_lock:
            return sorted(self._actions.pop((symbol, timeframe), ()))

    def windows(self, timeframe: str, start: int, end: int) -> list[tuple[int, int]]:
        if timeframe != "1m":
            return [(start, end)]
        step = REQUEST_DAYS_1M * DAY
        return [(s, min(s + step, end)) for s in range(start, end, step)]

    # files from before daily bars were dated by their exchange

    def legacy_day(self, symbol: str, timeframe: str, ts: int) -> int | None:
        """Up to 0.1 a daily bar was stored at 09:30 New York of the *New York* date of Yahoo's
        stamp (the exchange's local open): one day early for Asia and Australia. Recover the date
        the exchange traded: the day D whose local open falls on that New York date."""
        exchange = self.exchange(symbol)
        if exchange.key == "UNKNOWN" or timeframe not in ("1d", "1w"):
            return None
        ny_day = local_day(ts, _OLD_TZ)
        step = 7 if timeframe == "1w" else 1
        for day in (ny_day, ny_day + step):
            old = local_day(yahoo_instant(exchange, day), _OLD_TZ)
            if (old - weekday_of(old) if step == 7 else old) == ny_day:
                return day
        return None


def use_exchange_calendars(holidays: str) -> bool:
    if holidays not in ("auto", "on", "off"):
        raise ProviderUnavailableError(f"provider yahoo: holidays must be auto, on or off, not '{holidays}'")
    if holidays == "on" and not has_exchange_calendars():
        raise ProviderUnavailableError(f"provider yahoo: holidays need exchange_calendars: {INSTALL_HINT}")
    return holidays == "on" or (holidays == "auto" and has_exchange_calendars())


def adjust_mode(adjust: str) -> str:
    if adjust == "none":
        raise ProviderUnavailableError(
            "provider yahoo: adjust=none is not available: Yahoo's chart API serves prices adjusted for "
            "every split up to today, never as traded (use adjust=splits, the default, or adjust=all)")
    if adjust not in ("splits", "all"):
        raise ProviderUnavailableError(f"provider yahoo: adjust must be splits, all or none, not '{adjust}'")
    return adjust


def choose_client(client: str) -> str:
    if client not in ("auto", "browser", "stdlib"):
        raise ProviderUnavailableError(f"provider yahoo: client must be auto, browser or stdlib, not '{client}'")
    available = http.browser_client_available()
    if client == "browser" and not available:
        raise ProviderUnavailableError(f"provider yahoo: the browser client needs curl_cffi: {INSTALL_HINT}")
    return "browser" if client == "browser" or (client == "auto" and available) else "stdlib"


def yahoo_instant(exchange: Exchange, day: int) -> int:
    """Where Yahoo stamps the daily bar of local date `day`: the local open (midnight for markets
    that trade around the clock)."""
    tz = zone(exchange.tz)
    opens = datetime.combine(date.fromordinal(day + _EPOCH_ORDINAL), datetime.min.time(), tz)
    hh, mm = (int(x) for x in exchange.open.split(":")[:2])
    return int((opens + timedelta(hours=hh, minutes=mm)).timestamp())


def session_stamp(timeframe: str, ts: int, tz: ZoneInfo) -> int:
    """00:00Z of the local session date of `ts` (1d), or of that week's Monday (1w)."""
    day = local_day(ts, tz)
    if timeframe == "1w":
        day -= weekday_of(day)
    return day * DAY


def restamp(bar: Bar, ts: int) -> Bar:
    return (ts, *bar[1:])  # type: ignore[return-value]


def dated_request_window(timeframe: str, start: int, end: int, tz: ZoneInfo) -> tuple[int, int]:
    """period1/period2 for the session dates in [start, end) (00:00Z stamps). A day's bar lies
    within its local date, so one day of margin on each side covers every time zone. Weekly
    requests start at a Monday's local midnight: Yahoo anchors weekly buckets on period1."""
    if timeframe == "1w":
        monday = start // DAY - weekday_of(start // DAY)
        return local_midnight(monday, tz), end + WEEK
    return start - DAY, end + DAY


def granularity_ok(chart: Chart, interval: str, step: int) -> bool:
    """False when the bars are not `step` apart: Yahoo answers some intervals with coarser bars."""
    if chart.granularity and chart.granularity != interval:
        return False
    stamps = [b[0] for b in chart.bars]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False) if b - a < 6 * 3600]
    return not gaps or min(gaps) == step


def sessions_of(chart: Chart, calendar: Calendar, exchange: Exchange, bars: Sequence[Bar]) -> list[tuple[int, int]]:
    """The regular sessions the answer's bars fall in: Yahoo's own `tradingPeriods` (which know
    early closes), else the exchange calendar's."""
    if chart.sessions:
        return chart.sessions
    if exchange.always_open or not isinstance(calendar, SessionCalendar):
        return []
    tz = zone(exchange.tz)
    days = sorted({local_day(b[0], tz) for b in bars})
    return [calendar.session(d) for d in days if calendar.is_trading_day(d)]


def in_session(chart: Chart, calendar: Calendar, exchange: Exchange, step: int, lo: int, hi: int) -> list[Bar]:
    """Bars of [lo, hi) that open inside a regular session, on the session's grid. Drops the
    closing print (a bar stamped at the close itself), post-market bars of early-close days and the
    still-forming "live" row, the same way however the window was split into requests."""
    bars = [b for b in chart.bars if lo <= b[0] < hi]
    sessions = sessions_of(chart, calendar, exchange, bars)
    if not sessions:
        return [b for b in bars if b[0] % 60 == 0] if exchange.always_open else bars
    kept = []
    for bar in bars:
        for opens, closes in sessions:
            if opens <= bar[0] < closes and (bar[0] - opens) % step == 0:
                kept.append(bar)
                break
    return kept


def aggregate(bars: Sequence[Bar], step: int, sessions: Sequence[tuple[int, int]]) -> list[Bar]:
    """Finer bars into `step` buckets anchored at their session's open (first open, highest high,
    lowest low, last close, summed volume)."""
    buckets: dict[int, list[Bar]] = {}
    for bar in bars:
        opens = next((o for o, c in sessions if o <= bar[0] < c), bar[0] - bar[0] % step)
        buckets.setdefault(opens + (bar[0] - opens) // step * step, []).append(bar)
    out: list[Bar] = []
    for ts in sorted(buckets):
        group = buckets[ts]
        out.append((ts, group[0][1], max(b[2] for b in group), min(b[3] for b in group), group[-1][4],
                    sum(b[5] for b in group)))
    return out
