"""A local stand-in for Yahoo's v8 chart API across exchanges, answering in the real format.

Each `Listing` is one symbol on one exchange: its time zone, regular hours, holidays and early
closes. The server reproduces what the real API does (learned from recorded answers):

* daily bars stamped at the exchange's *local* open (local midnight for FX), weekly bars at the
  week's first local open;
* `meta.exchangeTimezoneName`, `meta.dataGranularity`, `meta.tradingPeriods` (intraday);
* halted rows with null prices, null volumes;
* optional quirks: the 16:00 closing print (O=H=L=C, volume 0), post-market bars on early-close
  days, `interval=30m` answered with 60m bars, weekly buckets anchored on `period1`'s weekday;
* a publication delay on a fake clock: a bar is served only once `delay_s` have passed since
  its period ended;
* corporate actions: `Listing.splits` and `Listing.dividends` by ex-date. Until the fake clock
  reaches a split's date, the bars before it are served as traded (`ratio` times higher); from
  then on every price before it is divided by the ratio (Yahoo's split-adjusted history) and, when
  the request asks `events=...split...`, the split is in `events.splits` like Yahoo's
  (`{date, numerator, denominator, splitRatio}` keyed by the date's instant). Dividends that have
  gone ex are in `events.dividends` (`{amount, date}`) and scale `indicators.adjclose` (daily
  and weekly answers) before their date by `1 - amount / previous close`, Yahoo's way.
  `Listing.events=False` serves the same prices without ever saying why they moved.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tests.providers.fake_apis import Handler, Request, Running, serve

DAY = 86400
EPOCH = date(1970, 1, 1)
INTERVAL_S = {"1m": 60, "5m": 300, "15m": 900, "30m": 1800, "60m": 3600, "1d": DAY, "1wk": 7 * DAY}


@dataclass
class Listing:
    symbol: str
    tz: str
    open: str = "09:30"
    close: str = "16:00"
    exchange_name: str = "NMS"
    weekdays: frozenset[int] = frozenset(range(5))
    holidays: frozenset[date] = frozenset()
    early_closes: dict[date, str] = field(default_factory=dict)
    daily_at_midnight: bool = False
    first_trade: int = 0
    closing_print: bool = False
    post_market_on_early_close: bool = False
    thirty_as_sixty: bool = False
    weekly_anchor_on_period1: bool = False
    trading_periods: bool = True
    halted: frozenset[int] = frozenset()
    """Timestamps answered with null prices (halts)."""
    price_scale: float = 1.0
    """Every price times this (NVDA at ~1000 rather than ~10..100)."""
    splits: dict[date, float] = field(default_factory=dict)
    """Ex-date -> new shares per old share (10 for 10:1)."""
    dividends: dict[date, float] = field(default_factory=dict)
    """Ex-date -> amount per share."""
    events: bool = True
    """Whether asked-for `events` are served (False: prices move and nothing says why)."""

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def trades_on(self, d: date) -> bool:
        return d.weekday() in self.weekdays and d not in self.holidays

    def hours(self, d: date, regular_close: bool = False) -> tuple[int, int]:
        """UTC open and close of local date `d` (the early close unless `regular_close`)."""
        close = self.close if regular_close else self.early_closes.get(d, self.close)
        at = lambda hhmm: int(datetime.combine(d, time.fromisoformat(hhmm), self.zone).timestamp())  # noqa: E731
        return at(self.open), at(close)

    def daily_instant(self, d: date) -> int:
        if self.daily_at_midnight:
            return int(datetime.combine(d, time(0, 0), self.zone).timestamp())
        return self.hours(d)[0]


def price(symbol: str, ts: int) -> tuple[float, float, float, float, float]:
    h = zlib.crc32(f"{symbol}:{ts}".encode())
    base = 10 + zlib.crc32(symbol.encode()) % 90
    o = round(base + (h % 100) / 100, 2)
    c = round(base + ((h >> 8) % 100) / 100, 2)
    return o, round(max(o, c) + 0.5, 2), round(min(o, c) - 0.25, 2), c, float((h >> 16) % 5000 + 1)


def local_dates(listing: Listing, start: int, end: int) -> Iterator[date]:
    first = datetime.fromtimestamp(start - DAY, listing.zone).date()
    last = datetime.fromtimestamp(end + DAY, listing.zone).date()
    d = first
    while d <= last:
        if listing.trades_on(d):
            yield d
        d += timedelta(days=1)


def intraday_rows(listing: Listing, step: int) -> Callable[[int, int], list[tuple[int, tuple]]]:
    def rows(start: int, end: int) -> list[tuple[int, tuple]]:
        out = []
        for d in local_dates(listing, start, end):
            opens, closes = listing.hours(d)
            if listing.post_market_on_early_close and d in listing.early_closes:
                closes = listing.hours(d, regular_close=True)[1]
            out += [(ts, price(listing.symbol, ts)) for ts in range(opens, closes, step)]
            if listing.closing_print:
                c = price(listing.symbol, closes - step)[3]
                out.append((closes, (c, c, c, c, 0.0)))
        return sorted(r for r in out if start <= r[0] < end)
    return rows


def daily_rows(listing: Listing, start: int, end: int) -> list[tuple[int, tuple]]:
    rows = [(listing.daily_instant(d), price(listing.symbol, listing.daily_instant(d)))
            for d in local_dates(listing, start, end)]
    return [r for r in rows if start <= r[0] <= end]  # Yahoo includes a bar at period2


def weekly_rows(listing: Listing, start: int, end: int) -> list[tuple[int, tuple]]:
    days = daily_rows(listing, start - 14 * DAY, end + 14 * DAY)
    anchor = datetime.fromtimestamp(start, listing.zone).date()
    phase = anchor.weekday() if listing.weekly_anchor_on_period1 else 0
    buckets: dict[date, list[tuple[int, tuple]]] = {}
    for ts, values in days:
        d = datetime.fromtimestamp(ts, listing.zone).date()
        key = d - timedelta(days=(d.weekday() - phase) % 7)
        buckets.setdefault(key, []).append((ts, values))
    out = []
    for _key, group in sorted(buckets.items()):
        o = group[0][1][0]
        hi = max(v[1] for _, v in group)
        lo = min(v[2] for _, v in group)
        c = group[-1][1][3]
        out.append((group[0][0], (o, hi, lo, c, sum(v[4] for _, v in group))))
    return [r for r in out if start <= r[0] <= end]


def published_before(listing: Listing, interval: str, ts: int) -> int:
    """When the bar opening at `ts` has ended."""
    if interval in ("1d", "1wk"):
        d = datetime.fromtimestamp(ts, listing.zone).date() + timedelta(days=6 if interval == "1wk" else 0)
        return listing.hours(d)[1]
    return ts + INTERVAL_S[interval]


@dataclass
class YahooMarket:
    listings: dict[str, Listing]
    now: Callable[[], float]
    delay_s: float = 0.0

    def today(self, listing: Listing) -> date:
        return datetime.fromtimestamp(self.now(), listing.zone).date()

    def scale(self, listing: Listing, d: date) -> float:
        """What prices of local date `d` are multiplied by: the listing's scale, times the ratio of
        every split after `d` that has not happened yet (those bars are still as traded)."""
        factor = listing.price_scale
        for ex, ratio in listing.splits.items():
            if ex > d and ex > self.today(listing):
                factor *= ratio
        return factor

    def scaled(self, listing: Listing, rows: list[tuple[int, tuple]]) -> list[tuple[int, tuple]]:
        if listing.price_scale == 1.0 and not listing.splits:
            return rows
        out = []
        for ts, (o, h, low, c, v) in rows:
            k = self.scale(listing, datetime.fromtimestamp(ts, listing.zone).date())
            out.append((ts, (round(o * k, 4), round(h * k, 4), round(low * k, 4), round(c * k, 4), v)))
        return out

    def close_before(self, listing: Listing, ex: date) -> float:
        """The served close of the last trading day before `ex`."""
        d = ex - timedelta(days=1)
        while not listing.trades_on(d):
            d -= timedelta(days=1)
        ts = listing.daily_instant(d)
        return round(price(listing.symbol, ts)[3] * self.scale(listing, d), 4)

    def dividend_factor(self, listing: Listing, d: date) -> float:
        """adjclose / close for local date `d`: every dividend gone ex after `d`, Yahoo's way."""
        factor = 1.0
        for ex, amount in listing.dividends.items():
            if d < ex <= self.today(listing):
                factor *= 1 - amount / self.close_before(listing, ex)
        return factor

    def events(self, listing: Listing, asked: str, p1: int, p2: int) -> dict[str, Any]:
        happened = lambda ex: ex <= self.today(listing) and p1 <= listing.daily_instant(ex) <= p2  # noqa: E731
        events: dict[str, Any] = {}
        if "split" in asked:
            splits = {}
            for ex, ratio in listing.splits.items():
                if happened(ex):
                    at = listing.daily_instant(ex)
                    n, d = (int(ratio), 1) if ratio >= 1 else (1, round(1 / ratio))
                    splits[str(at)] = {"date": at, "numerator": n, "denominator": d, "splitRatio": f"{n}:{d}"}
            if splits:
                events["splits"] = splits
        if "div" in asked:
            dividends = {str(listing.daily_instant(ex)): {"amount": amount, "date": listing.daily_instant(ex)}
                         for ex, amount in listing.dividends.items() if happened(ex)}
            if dividends:
                events["dividends"] = dividends
        return events

    def rows(self, listing: Listing, interval: str, p1: int, p2: int) -> list[tuple[int, tuple]]:
        if interval == "1d":
            rows = daily_rows(listing, p1, p2)
        elif interval == "1wk":
            rows = weekly_rows(listing, p1, p2)
        else:
            served = "60m" if interval == "30m" and listing.thirty_as_sixty else interval
            rows = intraday_rows(listing, INTERVAL_S[served])(p1, p2)
        cutoff = self.now() - self.delay_s
        return self.scaled(listing, [r for r in rows if published_before(listing, interval, r[0]) <= cutoff])

    def meta(self, listing: Listing, interval: str, p1: int, p2: int) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "currency": "USD", "symbol": listing.symbol, "exchangeName": listing.exchange_name,
            "instrumentType": "EQUITY", "firstTradeDate": listing.first_trade, "gmtoffset": 0,
            "timezone": "X", "exchangeTimezoneName": listing.tz, "dataGranularity": interval,
        }
        if interval not in ("1d", "1wk") and listing.trading_periods:
            meta["tradingPeriods"] = [[{"timezone": "X", "start": o, "end": c, "gmtoffset": 0}]
                                      for o, c in (listing.hours(d) for d in local_dates(listing, p1, p2))
                                      if c > p1 and o < p2]
        return meta

    def route(self, h: Handler, r: Request) -> None:
        prefix = "/v8/finance/chart/"
        symbol = r.path[len(prefix):] if r.path.startswith(prefix) else ""
        listing = self.listings.get(symbol)
        if listing is None:
            h.send_json(404, {"chart": {"result": None, "error": {
                "code": "Not Found", "description": "No data found, symbol may be delisted"}}})
            return
        interval = r.params.get("interval", "")
        p1, p2 = int(r.params["period1"]), int(r.params["period2"])
        if interval not in INTERVAL_S:
            h.send_json(400, {"chart": {"result": None, "error": {
                "code": "Bad Request", "description": f"Invalid input - interval={interval} is not supported."}}})
            return
        if interval == "1m" and p2 - p1 > 8 * DAY:
            h.send_json(422, {"chart": {"result": None, "error": {
                "code": "Unprocessable Entity", "description": f"1m data not available for startTime={p1} and "
                f"endTime={p2}. Only 8 days worth of 1m granularity data are allowed to be fetched per request."}}})
            return
        rows = [row for row in self.rows(listing, interval, p1, p2)]
        result: dict[str, Any] = {"meta": self.meta(listing, interval, p1, p2), "indicators": {"quote": [{}]}}
        if rows:
            nulls = [(ts, (None,) * 5 if ts in listing.halted else v) for ts, v in rows]
            result["timestamp"] = [ts for ts, _ in nulls]
            result["indicators"] = {"quote": [{k: [v[i] for _, v in nulls] for i, k in
                                              enumerate(("open", "high", "low", "close", "volume"))}]}
            if interval in ("1d", "1wk"):
                result["indicators"]["adjclose"] = [{"adjclose": [
                    None if v[3] is None else round(v[3] * self.dividend_factor(
                        listing, datetime.fromtimestamp(ts, listing.zone).date()), 6) for ts, v in nulls]}]
        events = self.events(listing, r.params.get("events", ""), p1, p2) if listing.events else {}
        if events:
            result["events"] = events
        h.send_json(200, {"chart": {"result": [result], "error": None}})


def serve_market(market: YahooMarket) -> Iterator[Running]:
    yield from serve(market.route)


def session_date_stamp(listing: Listing, ts: int) -> int:
    d = datetime.fromtimestamp(ts, listing.zone).date()
    return (d - EPOCH).days * DAY


def expected_daily(listing: Listing, start: int, end: int) -> list[tuple]:
    """What a correct client stores for session dates in [start, end): 00:00Z of the local date."""
    rows = daily_rows(listing, start - DAY, end + DAY)
    out = [(session_date_stamp(listing, ts), *v) for ts, v in rows if ts not in listing.halted]
    return [b for b in out if start <= b[0] < end]


def expected_intraday(listing: Listing, step: int, start: int, end: int) -> list[tuple]:
    """Regular-session bars only: no closing print, no post-market bars on early-close days."""
    out = []
    for d in local_dates(listing, start, end):
        opens, closes = listing.hours(d)
        out += [(ts, *price(listing.symbol, ts)) for ts in range(opens, closes, step)
                if start <= ts < end and ts not in listing.halted]
    return sorted(out)
