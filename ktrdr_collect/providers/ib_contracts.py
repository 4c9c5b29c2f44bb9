"""Symbols of the `ib` provider -> IB contracts; what IB's bars and errors mean.

| symbol | contract |
|---|---|
| `AAPL`, `BRK.B` | stock: `Stock("AAPL", exchange, currency)`; a dot becomes a space (`BRK B`, IB's class notation) |
| `EUR.USD` | forex on IDEALPRO: base `EUR`, quote currency `USD` (IB's own local symbol); both ISO currencies |
| `ES.202503`, `ES.20250321`, `ES.202503.CME` | future: symbol, expiry month (or day), optional exchange |

Continuous futures (`ES=F`-like) are refused: IB serves CONTFUT history only up to now (its
endDateTime must be empty), so a window cannot be asked for.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from ktrdr_collect.providers.base import (
    Bar,
    PermanentError,
    ProviderError,
    RateLimitedError,
    TransientError,
    UnknownSymbolError,
)
from ktrdr_collect.storage.timeframes import DAY, WEEK

CURRENCIES = frozenset({
    "AUD", "CAD", "CHF", "CNH", "CZK", "DKK", "EUR", "GBP", "HKD", "HUF", "ILS", "JPY",
    "KRW", "MXN", "NOK", "NZD", "PLN", "RUB", "SAR", "SEK", "SGD", "TRY", "USD", "ZAR",
})
"""Currencies IB trades on IDEALPRO."""

_FUTURE = re.compile(r"^([A-Z0-9]{1,10})\.(\d{6}|\d{8})(?:\.([A-Z0-9_]{2,12}))?$")
_FOREX = re.compile(r"^([A-Z]{3})\.([A-Z]{3})$")
_STOCK = re.compile(r"^[A-Z0-9]{1,12}(?:[.\-][A-Z0-9]{1,6})?$")


@dataclass
class ContractSpec:
    """The fields of an ib_async `Contract` we fill in (qualifyContracts completes the rest)."""

    secType: str
    symbol: str
    exchange: str
    currency: str = ""
    lastTradeDateOrContractMonth: str = ""
    conId: int = 0

    @property
    def is_forex(self) -> bool:
        return self.secType == "CASH"

    def fields(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v not in ("", 0)}


def parse_symbol(symbol: str, exchange: str = "SMART", currency: str = "USD") -> ContractSpec:
    """A collect symbol -> the contract to qualify; UnknownSymbolError for what IB cannot name."""
    text = symbol.strip().upper()
    if m := _FUTURE.match(text):
        return ContractSpec("FUT", m.group(1), m.group(3) or "", "", m.group(2))
    if (m := _FOREX.match(text)) and m.group(1) in CURRENCIES and m.group(2) in CURRENCIES:
        return ContractSpec("CASH", m.group(1), "IDEALPRO", m.group(2))
    if _STOCK.match(text):
        return ContractSpec("STK", text.replace(".", " "), exchange, currency)
    if text.endswith("=F"):
        raise UnknownSymbolError(
            f"ib: continuous futures like {text} cannot be fetched for a window; name the contract: "
            f"{text[:-2]}.YYYYMM (e.g. {text[:-2]}.202503)"
        )
    raise UnknownSymbolError(
        f"ib cannot map symbol {text}: use a stock (AAPL, BRK.B), a forex pair (EUR.USD) or a future (ES.202503)"
    )


# -- answers ---

MONDAY = 4 * DAY  # 1970-01-05T00:00:00Z


def bar_time(value: Any, timeframe: str) -> int:
    """An ib_async BarData.date -> epoch seconds, stamped as docs/storage.md (Timestamps) says.

    Intraday bars come as aware datetimes (formatDate=2: epoch seconds, which ib_async turns into
    UTC datetimes): their open instant, as given. Daily and weekly bars come as a `date` even with
    formatDate=2 (IB sends `yyyyMMdd` for bars of a day and more; ib_async parses those into a
    date): the exchange's session date, so `1d` is 00:00Z of that date, and `1w` 00:00Z of the
    Monday of its session week. A week dated on its Sunday (a week whose first session opens on
    Sunday: forex, CME, Sunday-to-Thursday exchanges) is the week of the Monday after it.
    """
    if isinstance(value, datetime):
        ts = int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())
    elif isinstance(value, date):
        ts = (value.toordinal() - date(1970, 1, 1).toordinal()) * DAY
    else:
        raise TransientError(f"ib answered a bar without a date: {value!r}"[:200])
    if timeframe == "1d":
        return ts - ts % DAY
    if timeframe == "1w":
        return week_of(ts - ts % DAY)
    return ts


def week_of(day: int) -> int:
    """00:00Z of the Monday of the session week holding the day starting at `day` (a Sunday
    belongs to the week of the next day)."""
    return day + DAY - (day + DAY - MONDAY) % WEEK


def to_bar(raw: Any, timeframe: str) -> Bar:
    try:
        values = tuple(float(getattr(raw, k)) for k in ("open", "high", "low", "close"))
        volume = max(0.0, float(raw.volume))  # forex bars report volume -1
    except (AttributeError, TypeError, ValueError):
        raise TransientError(f"ib answered a malformed bar: {raw!r}"[:200]) from None
    return (bar_time(raw.date, timeframe), *values, volume)  # type: ignore[return-value]



# -- errors ----------------------------------------------------------------------------------------

NO_SECURITY = 200
PACING = 162
CONNECTION_LOST = frozenset({1100, 1300, 502, 504, 2110})
"""Connectivity lost / not connected: reconnect before the next request."""
FARM_DOWN = frozenset({2103, 2105, 366, 1102})
PERMANENT = frozenset({321, 354, 10089, 10090, 10168, 10187, 10285, 10314})
VALIDATION = 321
ENDS_REQUEST = frozenset({VALIDATION})
"""Errors after which IB will not answer the request, though ib_async reports them as warnings and
keeps waiting for the answer until the timeout: the session ends such a request at once."""
INFO = frozenset({165, 10167, 2104, 2106, 2107, 2108, 2119, 2158})

ErrorEvent = tuple[int, int, str]
"""(reqId, errorCode, errorString) as ib_async's errorEvent reports them."""


class NoData(Exception):
    """IB has no bars in the window (162 "HMDS query returned no data"): an empty, fetched range."""


def classify(errors: list[ErrorEvent], what: str) -> ProviderError | NoData | None:
    """The meaning of the errors IB sent during one request; None when none matters."""
    found: ProviderError | NoData | None = None
    for _req, code, text in errors:
        lower = text.lower()
        err: ProviderError | NoData | None
        if code == NO_SECURITY:
            err = UnknownSymbolError(f"ib has no contract for {what} (error 200: {text})")
        elif code == PACING and "pacing violation" in lower:
            err = RateLimitedError(f"IB pacing violation for {what} (error 162)", retry_after=PACING_WAIT_S)
        elif code == PACING and ("returned no data" in lower or "no data" in lower):
            err = NoData(text)
        elif code == PACING and "permission" in lower:
            err = PermanentError(f"ib: no market data permissions for {what} (error 162: {text})")
        elif code in CONNECTION_LOST or code in FARM_DOWN:
            err = TransientError(f"ib connection trouble (error {code}: {text})")
        elif code in PERMANENT:
            err = PermanentError(f"ib refused the request for {what} (error {code}: {text})")
        elif code in INFO or 2100 <= code < 2200:
            err = None
        else:
            err = TransientError(f"ib error {code} for {what}: {text}")
        if err is not None and _rank(err) > _rank(found):
            found = err
    return found


PACING_WAIT_S = 60.0
"""How long to wait after a pacing violation (someone else used the budget: TWS charts, another
program on the same account)."""


def _rank(err: ProviderError | NoData | None) -> int:
    order = (type(None), NoData, TransientError, RateLimitedError, PermanentError, UnknownSymbolError)
    for i, cls in enumerate(order):
        if isinstance(err, cls):
            return i
    return 2


def lost_connection(errors: list[ErrorEvent]) -> bool:
    return any(code in CONNECTION_LOST for _r, code, _t in errors)
