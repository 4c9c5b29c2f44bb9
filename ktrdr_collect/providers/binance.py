"""`binance`: public spot klines from the Binance REST API (no key needed).

`GET {base_url}/api/v3/klines?symbol=BTCUSDT&interval=1h&startTime=ms&endTime=ms&limit=1000`
answers rows of 12 fields: open time (ms), open, high, low, close, volume (strings), close time (ms),
quote volume, trades, taker buy base, taker buy quote, ignore. Symbols are validated lazily: an
unknown one fails on its first klines request (code -1121), so a run with nothing missing makes
no request at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

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
from ktrdr_collect.providers.http import HttpFailure, RequestCancelled, get_json
from ktrdr_collect.storage.calendar import AlwaysOpenCalendar
from ktrdr_collect.storage.timeframes import TIMEFRAMES

EARLIEST = 1_499_990_400  # 2017-07-14T00:00:00Z, Binance's first klines
MAX_LIMIT = 1000
INVALID_SYMBOL = -1121
BAD_SYMBOL_CODES = frozenset({INVALID_SYMBOL, -1100})  # -1100: illegal characters in the symbol
_SEPARATORS = str.maketrans("", "", "/-_")


def market_id(symbol: str) -> str:
    """`BTC/USDT`, `btc-usdt` or `BTCUSDT` -> `BTCUSDT` (what the API wants)."""
    return symbol.upper().translate(_SEPARATORS)


def classify(failure: HttpFailure) -> ProviderError | None:
    """Binance error bodies: `{"code": -1121, "msg": "Invalid symbol."}`."""
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
    if not isinstance(body, list):
        raise TransientError(f"binance answered {type(body).__name__}, expected a list of klines")
    bars = (parse_kline(row, now_ms) for row in body)
    return sorted((b for b in bars if b is not None), key=lambda b: b[0])


class BinanceProvider(Provider):
    name = "binance"
    description = "Binance spot klines (crypto, 24/7), public REST API, no key needed"
    timeframes = TIMEFRAMES
    needs_network = True
    option_specs = (
        OptionSpec("base_url", str, "https://api.binance.com", "API root (a mirror, or a local test server)"),
        OptionSpec("rate_limit", float, 10.0, "requests per second across all jobs on this machine (0: no pacing)"),
        OptionSpec("max_bars", int, MAX_LIMIT, "bars per request, 1..1000"),
        OptionSpec("timeout_s", float, 30.0, "seconds before a request counts as failed (and is retried)"),
    )

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
        self.calendar = AlwaysOpenCalendar(first=EARLIEST)
        self.clock = clock

    def earliest(self, timeframe: str) -> int:
        return EARLIEST

    def _klines(self, symbol: str, timeframe: str, start: int, end: int, limit: int,
                interrupt: Interrupt | None) -> Any:
        params = {"symbol": market_id(symbol), "interval": timeframe, "startTime": start * 1000,
                  "endTime": end * 1000 - 1, "limit": limit}
        return get_json(f"{self.base_url}/api/v3/klines", params, self.options["timeout_s"], interrupt,
                        classify=classify)

    head_timestamp_is_request = True

    def head_timestamp(self, symbol: str, timeframe: str, interrupt: Interrupt | None = None) -> int:
        """The first kline the symbol has (one request: klines from the epoch, limit 1)."""
        body = self._klines(symbol, timeframe, 0, int(self.clock()), 1, interrupt)
        bars = parse_klines(body, int(self.clock() * 1000) + 10**15)  # a forming bar still marks the start
        if not bars:
            raise UnknownSymbolError(f"binance has no {timeframe} klines for {symbol}")
        return max(EARLIEST, bars[0][0])

    def fetch(self, symbol: str, timeframe: str, start: int, end: int, interrupt: Interrupt) -> list[Bar]:
        try:
            body = self._klines(symbol, timeframe, start, end, MAX_LIMIT, interrupt)
        except RequestCancelled:
            return []
        bars = parse_klines(body, int(self.clock() * 1000))
        return [b for b in bars if start <= b[0] < end]
