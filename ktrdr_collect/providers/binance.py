"""`binance`: public spot klines from the Binance REST API (no key needed).

`GET {base_url}/api/v3/klines?symbol=BTCUSDT&interval=1h&startTime=ms&endTime=ms&limit=1000`
answers rows of 12 fields: open time (ms), open, high, low, close, volume (strings), close time (ms),
quote volume, trades, taker buy base, taker buy quote, ignore. Symbols are validated lazily: an
unknown one fails on its first klines request (code -1121), so a run with nothing missing makes
no request at all.

A kline is stamped at the open of its period (UTC; weeks open on Monday 00:00Z), so a pair's first
kline can open before its first trade: ETHBTC, listed on Friday 2017-07-14, has a weekly kline
opening on Monday 2017-07-10. The floor is therefore the open of the period holding EARLIEST, per
timeframe, never EARLIEST itself, and the first kline Binance reports is never moved.

`source=auto` (the default) reads whole published months (and, in months not yet archived, whole
days) from Binance's public archives when that saves requests (binance_archive.py): the calendar
plans each such archive as one segment, and `fetch` reads a segment the API could not serve in one
request from its archive, its CHECKSUM verified. A missing or corrupt archive is fetched from the API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.providers.base import (
    MAX_RATE,
    MAX_TIMEOUT_S,
    MIN_RATE,
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
from ktrdr_collect.providers.binance_archive import (
    ARCHIVE_URL,
    SOURCES,
    Archive,
    ArchiveReader,
    ArchiveUnavailable,
    holding,
    ready_archives,
)
from ktrdr_collect.providers.binance_archive import TIMEFRAMES as ARCHIVE_TIMEFRAMES
from ktrdr_collect.providers.http import HttpFailure, HttpPool, RequestCancelled, get_bytes, parse_json
from ktrdr_collect.storage.calendar import AlwaysOpenCalendar
from ktrdr_collect.storage.timeframes import TIMEFRAMES, WEEK, timeframe_seconds

if TYPE_CHECKING:
    from ktrdr_collect.storage.columns import Columns

EARLIEST = 1_499_990_400  # 2017-07-14T00:00:00Z (a Friday), Binance's first trading day
MONDAY = 345_600  # 1970-01-05T00:00:00Z: weekly klines open on Mondays 00:00Z
WAF_STATUS = 403
WAF_MESSAGE = ("binance WAF refused the request (HTTP 403): backing off; too many requests from this IP? "
               "(if it never clears, the IP is blocked: lower rate_limit or use another base_url)")
MAX_LIMIT = 1000
INVALID_SYMBOL = -1121
BAD_SYMBOL_CODES = frozenset({INVALID_SYMBOL, -1100})  # -1100: illegal characters in the symbol
_SEPARATORS = str.maketrans("", "", "/-_")
log = logging.getLogger("ktrdr_collect.providers.binance")


def market_id(symbol: str) -> str:
    """`BTC/USDT`, `btc-usdt` or `BTCUSDT` -> `BTCUSDT` (what the API wants)."""
    return symbol.upper().translate(_SEPARATORS)


def period_start(ts: int, timeframe: str) -> int:
    """Open time of the `timeframe` kline whose period holds `ts` (weeks open on Monday 00:00Z)."""
    step = timeframe_seconds(timeframe)
    phase = MONDAY if step == WEEK else 0
    return ts - (ts - phase) % step


def listing_floor(timeframe: str) -> int:
    """The first kline Binance can have: the one whose period holds EARLIEST (1w: Monday 2017-07-10)."""
    return period_start(EARLIEST, timeframe)


class ListingCalendar:
    """24/7 klines (an AlwaysOpenCalendar per timeframe) from each timeframe's listing floor.

    The floor starts at `listing_floor` and is lowered, never raised, when Binance reports an
    earlier first kline (`head_timestamp`), so no kline Binance has is planned away.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._floors = {tf: listing_floor(tf) for tf in TIMEFRAMES}
        self._calendars = {tf: AlwaysOpenCalendar(first=first) for tf, first in self._floors.items()}

    def _for(self, timeframe: str) -> AlwaysOpenCalendar:
        try:
            return self._calendars[timeframe]
        except KeyError:
            raise ValueError(f"binance has no {timeframe!r} klines") from None

    def floor(self, timeframe: str) -> int:
        self._for(timeframe)  # validates the name
        return self._floors[timeframe]

    def lower_floor(self, timeframe: str, ts: int) -> None:
        """Binance reported a kline opening at `ts`: plan from there if that is earlier."""
        with self._lock:
            if ts < self.floor(timeframe):
                self._floors[timeframe] = ts
                self._calendars[timeframe] = AlwaysOpenCalendar(first=ts)

    def bar_times(self, timeframe: str, start: int, end: int) -> Iterator[int]:
        return self._for(timeframe).bar_times(timeframe, start, end)

    def count(self, timeframe: str, start: int, end: int) -> int:
        return self._for(timeframe).count(timeframe, start, end)

    def split(self, timeframe: str, start: int, end: int, max_bars: int) -> list[tuple[int, int]]:
        return self._for(timeframe).split(timeframe, start, end, max_bars)

    def first_bar(self, timeframe: str, start: int) -> int | None:
        return self._for(timeframe).first_bar(timeframe, start)

    def __repr__(self) -> str:
        return f"ListingCalendar(floors={self._floors!r})"


class ArchiveCalendar:
    """The listing calendar, planning each archive worth reading as one segment (`source` auto or archive).

    An archive is worth it when its part of the range holds more bars than one request returns (auto),
    or whenever it holds any (archive). Segments still tile the range: a stretch without bars joins
    the next segment, so the pipeline records all of it as fetched.
    """

    def __init__(self, base: ListingCalendar, source: str, clock: Callable[[], float]) -> None:
        self.base = base
        self.source = source
        self.clock = clock

    def floor(self, timeframe: str) -> int:
        return self.base.floor(timeframe)

    def lower_floor(self, timeframe: str, ts: int) -> None:
        self.base.lower_floor(timeframe, ts)

    def bar_times(self, timeframe: str, start: int, end: int) -> Iterator[int]:
        return self.base.bar_times(timeframe, start, end)

    def count(self, timeframe: str, start: int, end: int) -> int:
        return self.base.count(timeframe, start, end)

    def first_bar(self, timeframe: str, start: int) -> int | None:
        return self.base.first_bar(timeframe, start)

    def worth_reading(self, timeframe: str, start: int, end: int, max_bars: int) -> bool:
        if timeframe not in ARCHIVE_TIMEFRAMES:
            return False
        bars = self.base.count(timeframe, start, end)
        return bars > max_bars or (bars > 0 and self.source == "archive")

    def split(self, timeframe: str, start: int, end: int, max_bars: int) -> list[tuple[int, int]]:
        if timeframe not in ARCHIVE_TIMEFRAMES or start >= end:
            return self.base.split(timeframe, start, end, max_bars)
        pieces: list[tuple[int, int]] = []
        cursor = start
        for archive in ready_archives(start, end, self.clock()):
            lo, hi = max(start, archive.start), min(end, archive.end)
            if not self.worth_reading(timeframe, lo, hi, max_bars):
                continue
            pieces += self.base.split(timeframe, cursor, lo, max_bars)
            pieces.append((lo, hi))
            cursor = hi
        pieces += self.base.split(timeframe, cursor, end, max_bars)
        return _tile(pieces, start, end)

    def archive_for(self, timeframe: str, start: int, end: int, max_bars: int) -> Archive | None:
        """The archive to read segment [start, end) from, or None for the API."""
        if not self.worth_reading(timeframe, start, end, max_bars):
            return None
        first = self.base.first_bar(timeframe, start)
        if first is None:
            return None
        last = period_start(end - 1, timeframe)
        return holding(first, last, self.clock())

    def __repr__(self) -> str:
        return f"ArchiveCalendar({self.source!r}, {self.base!r})"


def _tile(pieces: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """Ordered segments stretched to cover [start, end) without holes (the holes hold no bars)."""
    if not pieces:
        return []
    tiled = []
    edge = start
    for _, piece_end in pieces:
        tiled.append((edge, piece_end))
        edge = piece_end
    tiled[-1] = (tiled[-1][0], end)
    return tiled


def classify(failure: HttpFailure) -> ProviderError | None:
    """Binance's reading of an error response.

    403 is its WAF (body: a CloudFront HTML page, or nothing): a rate-limit violation or a security
    block, so back off without a Retry-After. Other bodies are `{"code": -1121, "msg": "Invalid
    symbol."}`; 418 and 429 (with Retry-After) fall through to the generic rate-limit reading.
    """
    if failure.status == WAF_STATUS:
        return RateLimitedError(WAF_MESSAGE, retry_after=None)
    body = failure.body
    if not isinstance(body, dict) or "code" not in body:
        return None
    code, msg = body.get("code"), body.get("msg", "")
    if code in BAD_SYMBOL_CODES and failure.status < 500:
        return UnknownSymbolError(f"unknown symbol on binance: {msg} (code {code})")
    if failure.status < 500 and failure.status not in (418, 429):
        return PermanentError(f"binance refused the request: {msg} (code {code}, HTTP {failure.status})")
    return None


def _number(value: Any) -> float:
    return float(value)


def parse_kline(row: Any, now_ms: int) -> Bar | None:
    """One kline row -> a bar; None for the still-forming candle (close time not yet passed)."""
    if not isinstance(row, list) or len(row) < 7:
        raise TransientError(f"malformed kline from binance: {row!r}"[:200])
    try:
        open_ms, close_ms = int(row[0]), int(row[6])
        values = tuple(_number(x) for x in row[1:6])
    except (TypeError, ValueError):
        raise TransientError(f"malformed kline from binance: {row!r}"[:200]) from None
    if close_ms >= now_ms:
        return None
    o, h, low, c, v = values
    return (open_ms // 1000, o, h, low, c, v)


def parse_klines(body: Any, now_ms: int) -> list[Bar]:
    """Kline rows -> bars, ascending, without the still-forming candle; exactly what `parse_kline`
    makes of each row, in one pass over well-formed answers (the row-by-row path says what is wrong
    with any other)."""
    if not isinstance(body, list):
        raise TransientError(f"binance answered {type(body).__name__}, expected a list of klines")
    try:
        if not all(type(row) is list and len(row) >= 7 for row in body):
            raise ValueError
        bars: list[Bar] = [(int(r[0]) // 1000, float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5]))
                           for r in body]
        closes = [int(r[6]) for r in body]
    except (TypeError, ValueError):
        slow = (parse_kline(row, now_ms) for row in body)
        return sorted((b for b in slow if b is not None), key=itemgetter(0))
    if closes and max(closes) >= now_ms:
        bars = [b for b, close in zip(bars, closes, strict=True) if close < now_ms]
    bars.sort(key=itemgetter(0))
    return bars


@cache
def _kline_decoder() -> Any:
    """msgspec's typed decoder for a klines answer: the first seven fields of each row (open time,
    OHLCV as numeric strings, close time) straight into typed fields; the rest are skipped unread."""
    import msgspec

    class Kline(msgspec.Struct, array_like=True):
        open_ms: int
        open: float
        high: float
        low: float
        close: float
        volume: float
        close_ms: int

    return msgspec.json.Decoder(list[Kline], strict=False)  # strict=False: "0.0163" -> 0.0163


def decode_klines(raw: bytes, now_ms: int, url: str = "binance") -> Columns:
    """A klines answer's bytes -> columns, ascending, without the still-forming candle: exactly the
    bars `parse_klines` makes of the parsed body (which also says what is wrong with a malformed one)."""
    import msgspec
    import numpy as np

    from ktrdr_collect.storage.columns import Columns

    try:
        rows = _kline_decoder().decode(raw)
    except msgspec.DecodeError:
        return Columns.from_bars(parse_klines(parse_json(raw, url), now_ms))
    n = len(rows)
    ts = np.fromiter((k.open_ms for k in rows), np.int64, n) // 1000
    closes = np.fromiter((k.close_ms for k in rows), np.int64, n)
    values = np.array([(k.open, k.high, k.low, k.close, k.volume) for k in rows], np.float64).reshape(n, 5)
    cols = Columns(ts, values)
    if n and closes.max() >= now_ms:
        keep = closes < now_ms
        cols = Columns(ts[keep], values[keep])
    return cols.sorted_unique() if not cols.strictly_ascending() else cols


class BinanceProvider(Provider):
    name = "binance"
    description = "Binance spot klines (crypto, 24/7), public REST API, no key needed"
    timeframes = TIMEFRAMES
    needs_network = True
    option_specs = (
        OptionSpec("base_url", str, "https://api.binance.com", "API root (a mirror, or a local test server)"),
        OptionSpec("rate_limit", float, 10.0, "requests per second across all jobs on this machine (0: no pacing)",
                   low=MIN_RATE, high=MAX_RATE, zero_off=True),
        OptionSpec("max_bars", int, MAX_LIMIT, "bars per request, 1..1000", low=1, high=MAX_LIMIT),
        OptionSpec("timeout_s", float, 30.0, "seconds before a request counts as failed (and is retried)",
                   above=0, high=MAX_TIMEOUT_S),
        OptionSpec("source", str, "auto", "auto|api|archive: auto reads whole months and days from Binance's "
                   "public archives where that saves requests; archive wherever one is published; api never"),
        OptionSpec("archive_url", str, ARCHIVE_URL, "archives root (a mirror, or a local test server)"),
    )
    publish_delay_s = 5.0
    """A closed kline is served at once; 5 s covers clock skew between us and Binance."""

    def __init__(self, options: Mapping[str, Any] | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(options)
        o = self.options
        if not 1 <= o["max_bars"] <= MAX_LIMIT:
            raise ProviderUnavailableError(f"provider binance: max_bars must be 1..{MAX_LIMIT}, got {o['max_bars']}")
        if o["timeout_s"] <= 0:
            raise ProviderUnavailableError("provider binance: timeout_s must be > 0")
        self.base_url = o["base_url"].rstrip("/")
        self.max_bars = o["max_bars"]
        self.rate_limit = o["rate_limit"] if o["rate_limit"] > 0 else None
        if o["source"] not in SOURCES:
            raise ProviderUnavailableError(
                f"provider binance: source must be auto, api or archive, not '{o['source']}'")
        self.clock = clock
        self.http = HttpPool()
        """Kept-alive connections, shared by the job's workers (each request on its worker's thread)."""
        self.source = o["source"]
        listing = ListingCalendar()
        self.calendar: ListingCalendar | ArchiveCalendar = (
            listing if self.source == "api" else ArchiveCalendar(listing, self.source, clock))
        self.archives = ArchiveReader(o["archive_url"], self.http, lambda: self.options["timeout_s"])

    def earliest(self, timeframe: str) -> int:
        """The open of the first kline Binance can have for `timeframe` (1w: Monday 2017-07-10)."""
        return self.calendar.floor(timeframe)

    def _klines(self, symbol: str, timeframe: str, start: int, end: int, limit: int,
                interrupt: Interrupt | None) -> Any:
        return parse_json(self._klines_raw(symbol, timeframe, start, end, limit, interrupt),
                          f"{self.base_url}/api/v3/klines")

    def _klines_raw(self, symbol: str, timeframe: str, start: int, end: int, limit: int,
                    interrupt: Interrupt | None) -> bytes:
        params = {"symbol": market_id(symbol), "interval": timeframe, "startTime": start * 1000,
                  "endTime": end * 1000 - 1, "limit": limit}
        return get_bytes(f"{self.base_url}/api/v3/klines", params, self.options["timeout_s"], interrupt,
                         classify=classify, pool=self.http)

    head_timestamp_is_request = True

    def head_timestamp(self, symbol: str, timeframe: str, interrupt: Interrupt | None = None) -> int:
        """The open time of the symbol's first kline, as Binance reports it (one request: klines from
        the epoch, limit 1). It may open before the first trade (a listing week's Monday)."""
        body = self._klines(symbol, timeframe, 0, int(self.clock()), 1, interrupt)
        bars = parse_klines(body, int(self.clock() * 1000) + 10**15)  # a forming bar still marks the start
        if not bars:
            raise UnknownSymbolError(f"binance has no {timeframe} klines for {symbol}")
        first = bars[0][0]
        self.calendar.lower_floor(timeframe, first)
        return first

    def fetch(self, symbol: str, timeframe: str, start: int, end: int, interrupt: Interrupt) -> Sequence[Bar]:
        try:
            if isinstance(self.calendar, ArchiveCalendar):
                archive = self.calendar.archive_for(timeframe, start, end, self.max_bars)
                if archive is not None:
                    bars = self._from_archive(archive, symbol, timeframe, interrupt)
                    if bars is not None:
                        return bars.window(start, end)
            if self.calendar.count(timeframe, start, end) > self.max_bars:
                return self._from_api_in_pieces(symbol, timeframe, start, end, interrupt)
            return self._from_api(symbol, timeframe, start, end, interrupt)
        except RequestCancelled:
            return []

    def _from_api(self, symbol: str, timeframe: str, start: int, end: int, interrupt: Interrupt) -> Columns:
        raw = self._klines_raw(symbol, timeframe, start, end, MAX_LIMIT, interrupt)
        return decode_klines(raw, int(self.clock() * 1000), f"{self.base_url}/api/v3/klines").window(start, end)

    def _from_archive(self, archive: Archive, symbol: str, timeframe: str, interrupt: Interrupt) -> Columns | None:
        """The archive's bars, or None when the API must serve its span instead (missing or corrupt
        archive; with source=auto also an archive host that cannot be reached)."""
        market = market_id(symbol)
        try:
            return self.archives.bars(archive, market, timeframe, interrupt)
        except ArchiveUnavailable as e:
            reason = str(e)
        except TransientError as e:
            if self.source == "archive":
                raise
            reason = str(e)
        log.warning("binance archive %s not used (%s): its span comes from the API",
                    archive.file_name(market, timeframe), reason)
        return None

    def _from_api_in_pieces(self, symbol: str, timeframe: str, start: int, end: int,
                            interrupt: Interrupt) -> Columns:
        """An archive's span from the API: one request per `max_bars` bars, spaced by `rate_limit`
        (the engine paced the segment as one request)."""
        from ktrdr_collect.storage.columns import Columns

        parts: list[Columns] = []
        gap = 1.0 / self.rate_limit if self.rate_limit else 0.0
        listing = self.calendar.base if isinstance(self.calendar, ArchiveCalendar) else self.calendar
        for i, (lo, hi) in enumerate(listing.split(timeframe, start, end, self.max_bars)):
            if i and gap and interrupt.wait(gap):
                raise RequestCancelled
            parts.append(self._from_api(symbol, timeframe, lo, hi, interrupt))
        return Columns.concat(parts)

    def close(self) -> None:
        self.http.close()
