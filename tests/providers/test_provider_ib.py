"""The ib provider against a fake `IB` that behaves like ib_async's (no gateway, no ib_async needed).

The fake enforces IB's own rules as an oracle: the step-size table (a duration too long for the
bar size is refused with error 321, which ib_async takes for a warning: the request then waits for
its timeout unless someone ends it) and the pacing rules as IB documents them. For bars of 30 s or
less (or every bar size, with `hard_everywhere`): 60 requests in any 10 minutes, BID_ASK counted
twice; no identical request within 15 s; fewer than 6 per contract within 2 s; a violation is
answered with error 162 like IB, and recorded. For every bar size: at most 50 open requests.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ktrdr_collect.cli.main import app
from ktrdr_collect.engine.cancellation import CancellationToken
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.engine.pipeline import RetryPolicy
from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.providers import ib as ib_module
from ktrdr_collect.providers.base import Interrupt, PermanentError, RateLimitedError, TransientError, UnknownSymbolError
from ktrdr_collect.providers.ib import IbProvider
from ktrdr_collect.providers.ib_contracts import ContractSpec, NoData, classify, parse_symbol
from ktrdr_collect.providers.ib_session import end_request
from ktrdr_collect.providers.registry import create_provider, provider_class
from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.timeframes import DAY, WEEK, parse_ts

FAST = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002)
HOUR = 3600
NOW = float(parse_ts("2024-06-03T12:00:00Z"))

# -- the fake ---------------------------------------------------------------------------------------


class Clock:
    """Wall and monotonic time for the provider, its pacers and the fake; `sleep` advances it
    instead of sleeping (the provider's injectable sleep). `real=True` follows time.time() plus
    whatever was slept (for runs through the engine, whose own pacer uses the wall clock)."""

    def __init__(self, start: float = NOW, real: bool = False) -> None:
        self.base = time.time() if real else start
        self.real = real
        self.offset = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return (time.time() if self.real else self.base) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def sleep(self, seconds: float, interrupt: Interrupt) -> bool:
        self.slept.append(seconds)
        self.advance(seconds)
        return interrupt.is_cancelled


class Event:
    """ib_async's Event, as far as `+=`, `-=` and emit go."""

    def __init__(self) -> None:
        self.handlers: list[Callable[..., Any]] = []

    def __iadd__(self, handler: Callable[..., Any]) -> Event:
        self.handlers.append(handler)
        return self

    def __isub__(self, handler: Callable[..., Any]) -> Event:
        self.handlers.remove(handler)
        return self

    def emit(self, *args: Any) -> None:
        for handler in list(self.handlers):
            handler(*args)


@dataclass
class BarData:
    date: date | datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


STEP_DAYS = {"1 min": 1, "5 mins": 7, "15 mins": 7, "30 mins": 30, "1 hour": 30, "4 hours": 30,
             "1 day": 365, "1 week": 365}
"""IB's step-size table as the fake enforces it: the most days one request may span per bar size."""
BAR_SECONDS = {"5 secs": 5, "30 secs": 30, "1 min": 60, "5 mins": 300, "15 mins": 900, "30 mins": 1800,
               "1 hour": 3600, "4 hours": 14400, "1 day": DAY, "1 week": WEEK}
CONIDS = {"AAPL": 265598, "MSFT": 272093, "BRK B": 72063691, "NEWCO": 4242, "EUR": 12087792, "ES": 551601561}
HEADS = {"NEWCO": datetime(2020, 3, 10, 14, 30, tzinfo=UTC)}
DEFAULT_HEAD = datetime(1980, 12, 12, 14, 30, tzinfo=UTC)
NO_DATA = "Historical Market Data Service error message:HMDS query returned no data: AAPL@SMART Trades"
PACING = "Historical Market Data Service error message:Historical data request pacing violation"
INVALID = "Error validating request.-'bW' : cause - The API interface is currently in Read-Only mode."


def price(symbol: str, ts: int) -> float:
    return 100 + zlib.crc32(f"{symbol}:{ts}".encode()) % 1000 / 10


def market_bars(spec: Any, bar_size: str, start: int, end: int) -> list[BarData]:
    """The fake market: stocks Mon-Fri 14:30-21:00 UTC, forex Sun 22:00 - Fri 22:00 UTC; daily bars
    Mon-Fri as dates, weekly bars dated on their Friday (IB's date of a week varies; the provider
    snaps it to Monday)."""
    step = BAR_SECONDS[bar_size]
    forex = spec.secType == "CASH"
    out = []
    if bar_size in ("1 day", "1 week"):
        day0 = start // DAY
        for day in range(day0, -(-end // DAY)):
            ts = day * DAY
            weekday = (day + 3) % 7
            if weekday > 4 or not start <= ts < end or (bar_size == "1 week" and weekday != 4):
                continue
            out.append((date(1970, 1, 1).fromordinal(date(1970, 1, 1).toordinal() + day), ts))
    else:
        for ts in range(start - start % step + (step if start % step else 0), end, step):
            weekday, sec = (ts // DAY + 3) % 7, ts % DAY
            if forex:
                ok = (weekday < 4) or (weekday == 4 and sec < 22 * HOUR) or (weekday == 6 and sec >= 22 * HOUR)
            else:
                ok = weekday < 5 and 14 * HOUR + 1800 <= sec < 21 * HOUR
            if ok:
                out.append((datetime.fromtimestamp(ts, UTC), ts))
    bars = []
    for stamp, ts in out:
        p = price(spec.symbol, ts)
        bars.append(BarData(stamp, p, p + 1, p - 1, p + 0.5, -1.0 if forex else 1000.0 + ts % 97))
    return bars


def expected_bars(symbol: str, tf: str, start: int, end: int) -> list[tuple[int, float, float, float, float, float]]:
    """What the provider should store: the fake's bars with IB's dates turned into timestamps."""
    spec = parse_symbol(symbol)
    size = {"1m": "1 min", "5m": "5 mins", "15m": "15 mins", "30m": "30 mins", "1h": "1 hour", "4h": "4 hours",
            "1d": "1 day", "1w": "1 week"}[tf]
    lo = start - WEEK if tf == "1w" else start
    out = []
    for b in market_bars(spec, size, lo, end):
        ts = ib_module.bar_time(b.date, tf)
        if start <= ts < end:
            out.append((ts, b.open, b.high, b.low, b.close, max(0.0, b.volume)))
    return out


class Pending:
    """A request ib_async is waiting for: `ended` is set when someone settles it early."""

    def __init__(self, req_id: int) -> None:
        self.req_id = req_id
        self.ended = threading.Event()


class FakeWrapper:
    """ib_async 2.x's Wrapper, as far as pending requests go: futures by reqId, `_endReq` settles one."""

    def __init__(self) -> None:
        self._futures: dict[int, Pending] = {}

    def _endReq(self, key: int, result: Any = None, success: bool = True) -> None:  # noqa: N802
        pending = self._futures.pop(key, None)
        if pending is not None:
            pending.ended.set()


class FakeIB:
    """The ib_async.IB methods the provider uses, answering from `market_bars`. `script` lists what
    the next reqHistoricalData calls do: ok, pacing, nodata, timeout, silent, drop, farm, invalid
    (error 321, "Error validating request")."""

    def __init__(self, clock: Clock | None = None, hard_everywhere: bool = False) -> None:
        self.clock = clock or Clock()
        self.hard_everywhere = hard_everywhere
        self.books = FakeWrapper()
        self.wrapper: Any = self.books  # what the session may reach into
        self.pending: list[Pending] = []
        self.timed_out: list[int] = []
        self.open = self.max_open = 0
        self.errorEvent = Event()
        self.RequestTimeout = 0.0
        self.connected = False
        self.connects: list[tuple[str, int, int]] = []
        self.refuse = False
        self.script: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.heads: list[tuple[str, str]] = []
        self.sent: list[tuple[float, int, str, str]] = []  # (time, weight, contract key, request key)
        self.violations: list[str] = []
        self._req_id = 0

    def _next_id(self) -> int:
        self._req_id += 1
        return self._req_id

    def connect(self, host: str, port: int, clientId: int = 1, timeout: float = 4) -> None:  # noqa: N803
        if self.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        self.connected = True
        self.connects.append((host, port, clientId))

    def isConnected(self) -> bool:  # noqa: N802
        return self.connected

    def disconnect(self) -> None:
        self.connected = False

    def _require_connection(self) -> None:
        if not self.connected:
            raise ConnectionError("Not connected")

    def qualifyContracts(self, *contracts: Any) -> list[Any]:  # noqa: N802
        self._require_connection()
        out: list[Any] = []
        for c in contracts:
            known = CONIDS.get(c.symbol)
            if known is None or (c.secType == "CASH" and c.currency != "USD"):
                self.errorEvent.emit(self._next_id(), 200, "No security definition has been found for the request", c)
                out.append(None)
                continue
            c.conId = known
            out.append(c)
        return out

    def _paced(self, contract: Any, what: str, request: str, bar_size: str | None) -> bool:
        """IB's hard pacing rules, checked on the shared clock for bars of 30 s or less (or every
        bar size with `hard_everywhere`); False (and error 162) on a violation."""
        now = self.clock()
        if not (self.hard_everywhere or (bar_size is not None and BAR_SECONDS[bar_size] <= 30)):
            return True
        weight = 2 if what == "BID_ASK" else 1
        ckey = f"{contract.conId}:{contract.exchange}:{what}"
        problems = []
        if sum(w for t, w, _c, _r in self.sent if now - 600 < t <= now) + weight > 60:
            problems.append("more than 60 requests in 10 minutes")
        if any(r == request and now - t < 15 for t, _w, _c, r in self.sent):
            problems.append(f"identical request within 15 s: {request}")
        if sum(1 for t, _w, c, _r in self.sent if c == ckey and now - t < 2) + 1 >= 6:
            problems.append(f"6 requests for {ckey} within 2 s")
        self.sent.append((now, weight, ckey, request))
        if problems:
            self.violations += problems
            self.errorEvent.emit(self._req_id, 162, PACING, contract)
            return False
        return True

    def reqHeadTimeStamp(self, contract: Any, whatToShow: str, useRTH: bool, formatDate: int = 1) -> Any:  # noqa: N802, N803
        self._require_connection()
        self.heads.append((contract.symbol, whatToShow))
        if not self._paced(contract, whatToShow, f"head:{contract.conId}:{whatToShow}:{useRTH}", None):
            return []
        assert formatDate == 2
        return HEADS.get(contract.symbol, DEFAULT_HEAD)

    def reqHistoricalData(  # noqa: N802
        self, contract: Any, endDateTime: Any, durationStr: str, barSizeSetting: str, whatToShow: str,  # noqa: N803
        useRTH: bool, formatDate: int = 1, keepUpToDate: bool = False, chartOptions: Any = (),  # noqa: N803
        timeout: float = 60,
    ) -> list[BarData]:
        self._require_connection()
        req_id = self._next_id()
        pending = Pending(req_id)
        self.pending.append(pending)
        self.books._futures[req_id] = pending
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            return self._historical(pending, contract, endDateTime, durationStr, barSizeSetting, whatToShow, useRTH,
                                    formatDate, timeout)
        finally:
            self.open -= 1
            self.books._futures.pop(req_id, None)

    def _historical(self, pending: Pending, contract: Any, endDateTime: Any, durationStr: str,  # noqa: N803
                    barSizeSetting: str, whatToShow: str, useRTH: bool, formatDate: int,  # noqa: N803
                    timeout: float) -> list[BarData]:
        end = int(endDateTime.timestamp())
        n, unit = durationStr.split()
        self.requests.append({"symbol": contract.symbol, "end": end, "duration": durationStr,
                              "bar_size": barSizeSetting, "what": whatToShow, "rth": useRTH,
                              "format": formatDate, "timeout": timeout, "at": self.clock()})
        behaviour = self.script.pop(0) if self.script else "ok"
        if unit != "D" or int(n) > STEP_DAYS[barSizeSetting]:
            return self._invalid(pending, f"Error validating request: duration {durationStr} too long for "
                                 f"{barSizeSetting}", contract, timeout)
        if behaviour == "invalid":
            return self._invalid(pending, INVALID, contract, timeout)
        key = f"{contract.conId}:{end}:{durationStr}:{barSizeSetting}:{whatToShow}:{useRTH}"
        if behaviour == "drop":
            self.connected = False
            self.errorEvent.emit(-1, 1100, "Connectivity between IB and Trader Workstation has been lost.", None)
            raise ConnectionError("Socket disconnect")
        if not self._paced(contract, whatToShow, key, barSizeSetting):
            return []
        if behaviour == "pacing":
            self.errorEvent.emit(pending.req_id, 162, PACING, contract)
            return []
        if behaviour == "nodata":
            self.errorEvent.emit(pending.req_id, 162, NO_DATA, contract)
            return []
        if behaviour == "timeout":  # ib_async cancels the request and returns an empty list
            self.clock.advance(timeout)
            return []
        if behaviour == "silent":
            return []
        if behaviour == "farm":
            self.errorEvent.emit(pending.req_id, 2105, "HMDS data farm connection is broken:ushmds", None)
            return []
        return market_bars(contract, barSizeSetting, end - int(n) * DAY, end)

    def _invalid(self, pending: Pending, text: str, contract: Any, timeout: float) -> list[BarData]:
        """Error 321 as ib_async handles it: a warning, so the request stays pending; IB never
        answers it, so it waits out its timeout unless an errorEvent handler ended it."""
        self.errorEvent.emit(pending.req_id, 321, text, contract)
        if not pending.ended.is_set():
            self.clock.advance(timeout)
            self.timed_out.append(pending.req_id)
        return []


def make(fake: FakeIB | None = None, clock: Clock | None = None, **options: Any) -> tuple[IbProvider, FakeIB]:
    """A provider on a fake IB; with `pacing=strict`, an IB that enforces its hard rules on every bar size."""
    clock = clock or (fake.clock if fake else Clock())
    fake = fake or FakeIB(clock, hard_everywhere=str(options.get("pacing", "")).lower() == "strict")
    provider = IbProvider(options, ib_factory=lambda: fake, clock=clock, monotonic=clock, sleep=clock.sleep)
    return provider, fake


@pytest.fixture
def ib(home: Path) -> Any:
    made: list[IbProvider] = []

    def factory(fake: FakeIB | None = None, clock: Clock | None = None, **options: Any) -> tuple[IbProvider, FakeIB]:
        provider, f = make(fake, clock, **options)
        made.append(provider)
        return provider, f

    yield factory
    for p in made:
        p.close()


T0 = parse_ts("2024-01-01")  # a Monday


def fetch(provider: IbProvider, symbol: str, tf: str, start: int, end: int) -> list[Any]:
    return provider.fetch(symbol, tf, start, end, CancellationToken())


# -- contracts and options ---------------------------------------------------------------------------


def test_symbols_map_to_stock_forex_and_future_contracts() -> None:
    assert parse_symbol("AAPL") == ContractSpec("STK", "AAPL", "SMART", "USD")
    assert parse_symbol("brk.b") == ContractSpec("STK", "BRK B", "SMART", "USD")
    assert parse_symbol("EUR.USD") == ContractSpec("CASH", "EUR", "IDEALPRO", "USD")
    assert parse_symbol("ES.202503") == ContractSpec("FUT", "ES", "", "", "202503")
    assert parse_symbol("ES.20250321.CME") == ContractSpec("FUT", "ES", "CME", "", "20250321")
    assert parse_symbol("7203", exchange="TSEJ", currency="JPY") == ContractSpec("STK", "7203", "TSEJ", "JPY")
    with pytest.raises(UnknownSymbolError, match=r"ES\.YYYYMM"):
        parse_symbol("ES=F")
    with pytest.raises(UnknownSymbolError, match="cannot map symbol"):
        parse_symbol("BTC/USDT")


def test_options_defaults_and_validation(home: Path) -> None:
    provider, _ = make()
    o = provider.options
    assert (o["host"], o["port"], o["use_rth"], o["what_to_show"], o["pacing"]) == ("127.0.0.1", 4002, True, "", "auto")
    assert provider.session.connect_args.client_id == 1000 + os.getpid() % 30_000
    assert provider.rate_windows == ((60, 600.0),)
    assert make(what_to_show="bid_ask")[0].rate_windows == ((59, 600.0),)
    with pytest.raises(ProviderUnavailableError, match="what_to_show must be one of"):
        make(what_to_show="QUOTES")
    with pytest.raises(ProviderUnavailableError, match="unknown option 'base_url'"):
        make(base_url="x")
    with pytest.raises(ProviderUnavailableError, match="timeout_s must be > 0"):
        make(timeout_s=0)
    assert make(pacing=" Strict ")[0].pacing_mode == "strict"
    with pytest.raises(ProviderUnavailableError, match="pacing must be one of auto, strict"):
        make(pacing="fast")


def test_missing_ib_async_is_one_clear_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ib_module, "ib_async_installed", lambda: False)
    with pytest.raises(ProviderUnavailableError) as e:
        create_provider("ib")
    assert str(e.value) == "provider ib needs ib_async: pip install 'ktrdr-collect[ib]'"
    r = CliRunner().invoke(app, ["start", "AAPL", "-p", "ib"])
    assert r.exit_code == 1
    assert r.stderr.strip() == "Error: provider ib needs ib_async: pip install 'ktrdr-collect[ib]'"
    assert provider_class("ib") is IbProvider  # listing providers never needs the library


def test_connects_with_the_options_and_qualifies_once(ib: Any) -> None:
    provider, fake = ib(host="gw", port=4001, client_id=7)
    fetch(provider, "BRK.B", "1h", T0, T0 + DAY)
    fetch(provider, "BRK.B", "1h", T0 + DAY, T0 + 2 * DAY)
    assert fake.connects == [("gw", 4001, 7)]
    assert fake.RequestTimeout == 65.0
    assert [r["symbol"] for r in fake.requests] == ["BRK B", "BRK B"]


# -- requests ----------------------------------------------------------------------------------------


def test_a_segment_is_one_request_with_the_largest_duration(ib: Any) -> None:
    provider, fake = ib()
    start, end = T0, T0 + 30 * DAY
    segments = provider.calendar.split("1h", start, end, provider.max_bars_for("1h"))
    assert len(segments) == 1
    bars = fetch(provider, "AAPL", "1h", *segments[0])
    assert bars == expected_bars("AAPL", "1h", start, end)
    (req,) = fake.requests
    assert (req["duration"], req["bar_size"], req["what"], req["rth"], req["format"]) == (
        "30 D", "1 hour", "TRADES", True, 2)
    assert req["end"] == parse_ts("2024-01-30T23:00:00Z") + HOUR  # the segment's last possible bar, + 1 bar
    assert req["timeout"] == 60.0


def test_forex_defaults_to_bid_and_volume_minus_one_becomes_zero(ib: Any) -> None:
    provider, fake = ib()
    bars = fetch(provider, "EUR.USD", "1h", T0, T0 + 7 * DAY)
    assert fake.requests[0]["what"] == "BID"
    assert bars == expected_bars("EUR.USD", "1h", T0, T0 + 7 * DAY) and bars
    assert {b[5] for b in bars} == {0.0}
    provider2, fake2 = ib(what_to_show="MIDPOINT")
    fetch(provider2, "EUR.USD", "1h", T0, T0 + DAY)
    assert fake2.requests[0]["what"] == "MIDPOINT"


def test_daily_and_weekly_bars_get_utc_midnight_stamps(ib: Any) -> None:
    provider, fake = ib()
    daily = fetch(provider, "AAPL", "1d", T0, T0 + 14 * DAY)
    assert [b[0] for b in daily] == [T0 + d * DAY for d in (0, 1, 2, 3, 4, 7, 8, 9, 10, 11)]
    assert {r["format"] for r in fake.requests} == {2}  # formatDate=2: IB still dates daily bars yyyyMMdd
    weekly = fetch(provider, "AAPL", "1w", T0, T0 + 28 * DAY)
    assert [b[0] for b in weekly] == [T0 + w * WEEK for w in range(4)]  # dated Fridays, stored on Mondays


@pytest.mark.parametrize(("value", "tf", "stamp"), [
    (date(2024, 1, 2), "1d", "2024-01-02"),  # a session date, whatever the exchange's zone
    (date(2024, 1, 1), "1d", "2024-01-01"),  # forex: Monday's session opens Sunday 22:00Z, dated Monday
    (date(2024, 1, 7), "1d", "2024-01-07"),  # a Sunday session (Sunday-to-Thursday exchanges) stays Sunday
    (datetime(2024, 1, 2, tzinfo=UTC), "1d", "2024-01-02"),
    (date(2024, 1, 5), "1w", "2024-01-01"),  # a week dated on its Friday: its Monday
    (date(2024, 1, 1), "1w", "2024-01-01"),
    (date(2024, 1, 6), "1w", "2024-01-01"),  # Saturday: the week it ends
    (date(2024, 1, 7), "1w", "2024-01-08"),  # Sunday: the first session of the next week (forex, CME)
    (datetime(2024, 1, 2, 14, 30, tzinfo=UTC), "1h", "2024-01-02T14:30:00Z"),  # intraday: the open instant
    (datetime(2024, 1, 2, 23, 30, tzinfo=UTC), "30m", "2024-01-02T23:30:00Z"),
])
def test_bar_stamps_follow_the_contract(value: date, tf: str, stamp: str) -> None:
    assert ib_module.bar_time(value, tf) == parse_ts(stamp)


@pytest.mark.parametrize("pacing", ["auto", "strict"])
def test_a_window_wider_than_one_request_is_split_and_paced(ib: Any, pacing: str) -> None:
    provider, fake = ib(pacing=pacing)
    bars = fetch(provider, "AAPL", "1h", T0, T0 + 90 * DAY)  # one call, as if planned elsewhere
    assert bars == expected_bars("AAPL", "1h", T0, T0 + 90 * DAY)
    assert [r["duration"] for r in fake.requests] == ["30 D", "30 D", "30 D"]
    assert not fake.violations
    stamps = provider.pacer_of("1h")._update(lambda stamps, now: len(stamps))
    assert stamps == 2  # the engine paces the first request; the provider booked the other two
    assert (provider.pacer_of("1h") is provider.pacer) == (pacing == "strict")  # soft: its own log


# -- errors ------------------------------------------------------------------------------------------


def test_error_classification() -> None:
    assert isinstance(classify([(1, 200, "No security definition has been found")], "X"), UnknownSymbolError)
    pacing = classify([(1, 162, PACING)], "X")
    assert isinstance(pacing, RateLimitedError) and pacing.retry_after == 60.0
    assert isinstance(classify([(1, 162, NO_DATA)], "X"), NoData)
    assert isinstance(classify([(-1, 1100, "Connectivity lost")], "X"), TransientError)
    assert isinstance(classify([(-1, 2105, "HMDS data farm connection is broken")], "X"), TransientError)
    assert isinstance(classify([(1, 162, "No market data permissions for NYSE STK")], "X"), PermanentError)
    assert isinstance(classify([(1, 321, "Error validating request")], "X"), PermanentError)
    assert isinstance(classify([(1, 999, "something new")], "X"), TransientError)
    assert classify([(-1, 2104, "Market data farm connection is OK"), (1, 10167, "delayed")], "X") is None
    assert classify([], "X") is None
    # the worst one wins: an unknown symbol beats a farm message
    assert isinstance(classify([(-1, 2105, "broken"), (1, 200, "no def")], "X"), UnknownSymbolError)


@pytest.mark.parametrize(("behaviour", "error", "match"), [
    ("pacing", RateLimitedError, "pacing violation"),
    ("timeout", TransientError, "timed out after 60s"),
    ("drop", TransientError, "connection to IB dropped"),
    ("farm", TransientError, "2105"),
])
def test_failed_requests_raise_classified_errors(ib: Any, behaviour: str, error: type, match: str) -> None:
    provider, fake = ib()
    fake.script = [behaviour]
    with pytest.raises(error, match=match):
        fetch(provider, "AAPL", "1h", T0, T0 + DAY)


def test_error_321_fails_the_request_at_once_with_ibs_message(ib: Any) -> None:
    """ib_async logs 321 as a warning and would wait for the timeout; the session ends the request."""
    provider, fake = ib()
    fake.script = ["invalid"]
    with pytest.raises(PermanentError, match=r"error 321: Error validating request\.-'bW' : cause - The API"):
        fetch(provider, "AAPL", "1h", T0, T0 + DAY)
    (pending,) = fake.pending
    assert pending.ended.is_set() and fake.timed_out == [] and fake.wrapper._futures == {}


def test_error_321_without_a_way_to_end_the_request_still_fails_after_the_timeout(ib: Any) -> None:
    provider, fake = ib(timeout_s=5)
    fake.wrapper = object()  # an ib_async whose request book the session does not know
    fake.script = ["invalid"]
    with pytest.raises(PermanentError, match="error 321"):
        fetch(provider, "AAPL", "1h", T0, T0 + DAY)
    assert fake.timed_out == [1]


class _Registry:
    """ib_async's newer RequestRegistry, as far as end_request uses it."""

    def __init__(self, req_id: int) -> None:
        self.live = {req_id: type("Req", (), {"key": ("ReqIdKey", req_id)})()}
        self.settled: list[Any] = []

    def find_by_reqid(self, req_id: int) -> Any:
        return self.live.get(req_id)

    def set_result(self, key: Any) -> None:
        self.live.pop(key[1], None)
        self.settled.append(key)


def test_end_request_knows_both_ib_async_request_books() -> None:
    old = FakeWrapper()
    old._futures[7] = Pending(7)
    assert end_request(type("IB", (), {"wrapper": old})(), 7) and old._futures == {}
    assert not end_request(type("IB", (), {"wrapper": old})(), 7)  # settled already
    new = _Registry(9)
    ib_new = type("IB", (), {"wrapper": type("W", (), {"requests": new})()})()
    assert end_request(ib_new, 9) and new.settled == [("ReqIdKey", 9)]
    assert not end_request(ib_new, 10) and not end_request(object(), 9)


def test_an_invalid_request_fails_its_symbol_without_retries(home: Path, ib: Any) -> None:
    fake = FakeIB(Clock(real=True))
    fake.script = ["invalid"]
    (result,), _, _ = engine_run(home, ib, ["AAPL"], "1h", "2024-01-01", "2024-01-20", fake=fake)
    assert result.status == "failed" and "error 321" in (result.error or "")
    assert len(fake.requests) == 1 and fake.timed_out == []


def test_no_data_is_an_empty_range_but_silence_after_the_timeout_is_not(ib: Any) -> None:
    provider, fake = ib(timeout_s=5)
    fake.script = ["nodata", "silent", "timeout"]
    assert fetch(provider, "AAPL", "1h", T0, T0 + DAY) == []
    assert fetch(provider, "AAPL", "1h", T0 + DAY, T0 + 2 * DAY) == []  # answered at once: nothing there
    with pytest.raises(TransientError, match="timed out after 5s"):
        fetch(provider, "AAPL", "1h", T0 + 2 * DAY, T0 + 3 * DAY)


def test_a_dropped_connection_reconnects_on_the_next_request(ib: Any) -> None:
    provider, fake = ib(pacing="strict")
    fake.script = ["drop"]
    with pytest.raises(TransientError):
        fetch(provider, "AAPL", "1h", T0, T0 + DAY)
    with pytest.raises(RateLimitedError, match="identical request within 15 s") as e:
        fetch(provider, "AAPL", "1h", T0, T0 + DAY)  # the same request again at once
    assert e.value.retry_after is not None and 15 < e.value.retry_after < 16
    fake.clock.advance(e.value.retry_after)
    assert fetch(provider, "AAPL", "1h", T0, T0 + DAY) == expected_bars("AAPL", "1h", T0, T0 + DAY)
    assert len(fake.connects) == 2


def test_soft_pacing_retries_an_identical_request_at_once(ib: Any) -> None:
    """For bars of a minute and more IB documents no 15-second rule: the retry is not held back."""
    provider, fake = ib()
    fake.script = ["drop"]
    with pytest.raises(TransientError):
        fetch(provider, "AAPL", "1h", T0, T0 + DAY)
    assert fetch(provider, "AAPL", "1h", T0, T0 + DAY) == expected_bars("AAPL", "1h", T0, T0 + DAY)
    assert provider.clock.slept == [] and not fake.violations and len(fake.connects) == 2


def test_a_gateway_that_is_not_running_is_transient(ib: Any) -> None:
    provider, fake = ib()
    fake.refuse = True
    with pytest.raises(TransientError, match="cannot connect to TWS / IB Gateway at 127.0.0.1:4002"):
        fetch(provider, "AAPL", "1h", T0, T0 + DAY)


def test_unknown_contract_is_an_unknown_symbol(ib: Any) -> None:
    provider, fake = ib()
    with pytest.raises(UnknownSymbolError, match="error 200: No security definition"):
        fetch(provider, "NOPE", "1d", T0, T0 + 30 * DAY)
    with pytest.raises(UnknownSymbolError):
        fetch(provider, "EUR.CHF", "1d", T0, T0 + 30 * DAY)
    assert fake.requests == []


def test_head_timestamp_is_floored_to_the_bar_and_waits_for_the_identical_request_rule(ib: Any) -> None:
    provider, fake = ib(pacing="strict")
    assert provider.head_timestamp("NEWCO", "1d") == parse_ts("2020-03-10")
    assert provider.head_timestamp("NEWCO", "4h") == parse_ts("2020-03-10T12:00:00Z")
    assert provider.head_timestamp("NEWCO", "1w") == parse_ts("2020-03-09")
    assert fake.heads == [("NEWCO", "TRADES")] * 3
    # the fake would refuse an identical head request within 15 s: the provider waited instead
    assert not fake.violations
    assert provider.clock.slept and max(provider.clock.slept) > 15  # waited for the identical-request rule


def test_head_timestamps_of_minute_and_larger_bars_do_not_wait(ib: Any) -> None:
    provider, fake = ib()
    assert [provider.head_timestamp("NEWCO", tf) for tf in ("1d", "1d", "1h")] == [
        parse_ts("2020-03-10"), parse_ts("2020-03-10"), parse_ts("2020-03-10T14:00:00Z")]
    assert provider.clock.slept == [] and not fake.violations


def test_cancelled_while_waiting_for_a_pacing_rule_returns_nothing(ib: Any) -> None:
    provider, fake = ib(pacing="strict")
    token = CancellationToken()
    for i in range(5):
        provider.fetch("AAPL", "1h", T0 + i * DAY, T0 + (i + 1) * DAY, token)
    token.cancel()
    assert provider.fetch("AAPL", "1h", T0 + 5 * DAY, T0 + 6 * DAY, token) == []
    assert len(fake.requests) == 5


# -- through the engine --------------------------------------------------------------------------------


def engine_run(home: Path, ib: Any, symbols: list[str], tf: str, start: Any, end: Any, fake: FakeIB | None = None,
               **options: Any) -> tuple[list[Any], FakeIB, CsvStore]:
    clock = fake.clock if fake else Clock(real=True)
    provider, fake = ib(fake, clock, **options)
    store = CsvStore(home / "data")
    engine = ProcessingEngine(provider, store, workers=2, retry=FAST)
    return engine.process_batch(symbols, tf, start=start, end=end), fake, store


def test_pipeline_end_to_end(home: Path, ib: Any) -> None:
    start, end = "2024-01-01", "2024-03-01"
    results, fake, store = engine_run(home, ib, ["AAPL", "EUR.USD", "NOPE"], "1h", start, end)
    by = {r.symbol: r for r in results}
    assert by["AAPL"].ok and by["EUR.USD"].ok
    assert by["NOPE"].status == "failed" and "error 200" in (by["NOPE"].error or "")
    s, e = parse_ts(start), parse_ts(end)
    for sym in ("AAPL", "EUR.USD"):
        assert store.read("ib", "1h", sym) == expected_bars(sym, "1h", s, e)
        assert by[sym].requests == by[sym].segments_total == 2  # 60 days of 1h: 30 D per request
    assert len(fake.requests) == 4 and not fake.violations
    again, fake2, _ = engine_run(home, ib, ["AAPL", "EUR.USD"], "1h", start, end)
    assert all(r.ok and r.requests == 0 for r in again) and fake2.requests == []


def test_pipeline_retries_a_timeout_and_stores_no_data_as_fetched(home: Path, ib: Any) -> None:
    fake = FakeIB(Clock(real=True), hard_everywhere=True)
    fake.script = ["timeout", "ok", "nodata", "pacing"]
    provider, _ = ib(fake, fake.clock, timeout_s=6, pacing="strict")
    s, e = parse_ts("2021-06-01"), parse_ts("2024-06-01")
    segments = provider.calendar.split("1d", s, e, provider.max_bars_for("1d"))
    engine = ProcessingEngine(provider, CsvStore(home / "data"), workers=1,
                              retry=RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002, max_throttled=0))
    (result,) = engine.process_batch(["MSFT"], "1d", start=s, end=e)
    # timeout -> retried (after waiting out the identical-request rule on the clock); no data -> an
    # empty, fetched segment; a pacing violation -> throttled (max_throttled=0 here: the symbol fails)
    assert result.status == "failed" and "pacing violation" in (result.error or "")
    assert len(segments) == 4 and result.requests == 4 and not fake.violations
    assert fake.clock.slept and 9 < max(fake.clock.slept) < 10  # 15.3 s after the first try, minus its 6 s
    stored = CsvStore(home / "data").read("ib", "1d", "MSFT")
    assert stored == expected_bars("MSFT", "1d", s, segments[0][1])
    later = Clock(real=True)
    later.advance(fake.clock.offset + 16)  # past IB's 15 s for identical requests (the refused one is asked again)
    provider2, fake2 = ib(FakeIB(later, hard_everywhere=True), pacing="strict")
    (again,) = ProcessingEngine(provider2, CsvStore(home / "data"), workers=1).process_batch(
        ["MSFT"], "1d", start=s, end=e)
    assert again.ok and again.requests == 2  # only the last two segments: the empty one counts as fetched
    assert len(fake2.requests) == 2 and fake2.requests[0]["end"] == fake.requests[-1]["end"]  # the refused one


def test_start_earliest_uses_the_head_timestamp(home: Path, ib: Any) -> None:
    results, fake, store = engine_run(home, ib, ["NEWCO"], "1d", "earliest", "2024-06-01")
    assert results[0].ok and fake.heads == [("NEWCO", "TRADES")]
    bars = store.read("ib", "1d", "NEWCO")
    assert bars[0][0] == parse_ts("2020-03-10")
    assert bars == expected_bars("NEWCO", "1d", parse_ts("2020-03-10"), parse_ts("2024-06-01"))
    assert results[0].requests == 6 and not fake.violations  # the head timestamp is a paced request too


# -- a real gateway ------------------------------------------------------------------------------------

IB_TEST = os.environ.get("KTRDR_COLLECT_IB_TEST", "")


@pytest.mark.skipif(not IB_TEST, reason="set KTRDR_COLLECT_IB_TEST=host:port to run against TWS / IB Gateway")
def test_real_gateway_two_symbols(home: Path) -> None:
    pytest.importorskip("ib_async")
    host, _, port = IB_TEST.rpartition(":")
    provider = IbProvider({"host": host or "127.0.0.1", "port": int(port)})
    try:
        engine = ProcessingEngine(provider, CsvStore(home / "data"), workers=2)
        end = int(time.time()) // DAY * DAY
        results = engine.process_batch(["AAPL", "MSFT"], "1d", start=end - 30 * DAY, end=end)
    finally:
        provider.close()
    assert [r.status for r in results] == ["completed", "completed"], [r.error for r in results]
    for sym in ("AAPL", "MSFT"):
        bars = CsvStore(home / "data").read("ib", "1d", sym)
        assert 15 <= len(bars) <= 23 and all(b[0] % DAY == 0 for b in bars)
