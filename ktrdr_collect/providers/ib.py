"""`ib`: historical bars from Interactive Brokers through TWS or IB Gateway, with ib_async.

Needs the optional extra (`pip install 'ktrdr-collect[ib]'`) and a running, logged-in TWS or IB
Gateway with the API enabled (paper trading Gateway: port 4002). ib_async is imported lazily on
the IB thread, so listing providers or running tests never needs it; tests inject a fake `IB`.

One segment of a job is one `reqHistoricalData(contract, endDateTime, "N D", barSize, whatToShow,
useRTH, formatDate=2)` with the largest duration IB's step-size table allows for the bar size
(ib_plan). Pacing per bar size (ib_limits): for bars of 30 s or less (or any bar size with
`pacing=strict`) IB's hard rules, documented for small bars: the engine's machine-wide pacer keeps
60 requests per 10 minutes (`rate_windows`), the per-contract rules (no identical request within
15 s, fewer than 6 per contract in 2 s) are kept here, and BID_ASK requests count twice. For bars
of a minute and more (`pacing=auto`, the default) IB only throttles softly: a lighter machine-wide
pace (`SOFT_RATE`, its own shared log) and no per-contract rules (`pacing_for`).
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.providers.base import (
    MAX_TIMEOUT_S,
    Bar,
    Interrupt,
    OptionSpec,
    PermanentError,
    Provider,
    RateLimitedError,
    TransientError,
    UnknownSymbolError,
)
from ktrdr_collect.providers.ib_contracts import MONDAY, ContractSpec, NoData, bar_time, classify, parse_symbol, to_bar
from ktrdr_collect.providers.ib_limits import (
    PACING_MODES,
    SOFT_RATE,
    STRICT_WINDOW,
    ContractLimiter,
    hard_rules_apply,
    limiter_for,
)
from ktrdr_collect.providers.ib_plan import BAR_SIZES, IbCalendar, Request, max_bars
from ktrdr_collect.providers.ib_session import Answer, CallCancelled, ConnectArgs, IbSession
from ktrdr_collect.providers.pacing import SharedPacer, pacer_for
from ktrdr_collect.storage.timeframes import TIMEFRAMES, WEEK, timeframe_seconds

INSTALL_HINT = "pip install 'ktrdr-collect[ib]'"
WHAT_TO_SHOW = ("TRADES", "MIDPOINT", "BID", "ASK", "BID_ASK", "ADJUSTED_LAST")
WINDOW = STRICT_WINDOW
"""IB's hard rule: at most 60 historical data requests in any 10 minutes."""
PUBLISH_DELAY_S = 0.0
"""How long after a bar's period ends IB may take to serve it: none. IB builds historical bars from
its live feed (a request ending now even returns the bar still forming), so a bar is there once its
period has ended; one IB is late with is not lost (the request reaching the edge records only up to
its last bar, docs/storage.md)."""
MAX_WAIT_IN_PLACE_S = 10.0
"""Longest wait for a per-contract rule inside a request. The engine has already stamped the
request in the 10-minute window; waiting longer than that window's margin (2% of 600 s = 12 s)
could crowd the next window, so longer waits become a RateLimitedError the engine waits out."""
EARLIEST = 315_532_800  # 1980-01-01T00:00:00Z: before IB's oldest daily bars


class _Never:
    """An interrupt that never fires (for calls made outside a fetch)."""

    is_cancelled = False

    def wait(self, timeout: float) -> bool:
        time.sleep(max(0.0, timeout))
        return False


def ib_async_installed() -> bool:
    return importlib.util.find_spec("ib_async") is not None


def default_ib_factory() -> Any:
    """A real ib_async `IB` (called on the IB thread, which gets its own event loop)."""
    import asyncio

    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    from ib_async import IB

    return IB()


def default_contract_factory(spec: ContractSpec) -> Any:
    from ib_async import Contract

    return Contract(**spec.fields())


class IbProvider(Provider):
    name = "ib"
    description = ("Interactive Brokers via TWS / IB Gateway (ib_async): stocks, forex, futures; "
                   "IB's pacing per bar size")
    timeframes = TIMEFRAMES
    needs_network = True
    option_specs = (
        OptionSpec("host", str, "127.0.0.1", "TWS / IB Gateway host"),
        OptionSpec("port", int, 4002, "API port: 4002 Gateway paper, 4001 Gateway live, 7497/7496 TWS paper/live",
                   low=1, high=65535),
        OptionSpec("client_id", int, 0, "API client id; 0: one derived from the process id (jobs never clash)",
                   low=0, high=2**31 - 1),
        OptionSpec("what_to_show", str, "", "TRADES, MIDPOINT, BID, ASK, BID_ASK, ADJUSTED_LAST; "
                   "empty: TRADES (BID for forex)"),
        OptionSpec("use_rth", bool, True, "regular trading hours only"),
        OptionSpec("timeout_s", float, 60.0, "seconds before a request counts as timed out (and is retried)",
                   above=0, high=MAX_TIMEOUT_S),
        OptionSpec("exchange", str, "SMART", "exchange for stocks"),
        OptionSpec("currency", str, "USD", "currency for stocks"),
        OptionSpec("weekends", bool, False, "markets with bars on Saturday/Sunday (else no request asks for them)"),
        OptionSpec("pacing", str, "auto", "auto: IB's hard pacing rules for bars of 30 s or less, a lighter pace for "
                   "1 min and more (IB only throttles those softly); strict: the hard rules for every bar size"),
    )
    publish_delay_s = PUBLISH_DELAY_S

    def __init__(
        self,
        options: Mapping[str, Any] | None = None,
        ib_factory: Callable[[], Any] | None = None,
        contract_factory: Callable[[ContractSpec], Any] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float, Interrupt], bool] | None = None,
    ) -> None:
        super().__init__(options)
        o = self.options
        if ib_factory is None and not ib_async_installed():
            raise ProviderUnavailableError(f"provider ib needs ib_async: {INSTALL_HINT}")
        what = o["what_to_show"].strip().upper()
        if what and what not in WHAT_TO_SHOW:
            raise ProviderUnavailableError(f"provider ib: what_to_show must be one of {', '.join(WHAT_TO_SHOW)}")
        if o["timeout_s"] <= 0:
            raise ProviderUnavailableError("provider ib: timeout_s must be > 0")
        if not 0 <= o["client_id"] < 2**31:
            raise ProviderUnavailableError("provider ib: client_id must be >= 0")
        self.pacing_mode = o["pacing"].strip().lower()
        if self.pacing_mode not in PACING_MODES:
            raise ProviderUnavailableError(f"provider ib: pacing must be one of {', '.join(PACING_MODES)}")
        self.what_to_show = what
        self.calendar = IbCalendar(weekends=o["weekends"])
        count, span = WINDOW
        # the hard rules' window, also the default for a caller that does not say the timeframe.
        # BID_ASK counts twice: the log gets a second stamp per request (see _count_twice), so the
        # engine books it only while the window has room for two
        self.rate_windows = ((count - 1, span),) if what == "BID_ASK" else (WINDOW,)
        self.clock = clock
        self._sleep = sleep or (lambda seconds, interrupt: interrupt.wait(seconds))
        self._contract_factory = contract_factory or (
            (lambda spec: spec) if ib_factory is not None else default_contract_factory)
        client_id = o["client_id"] or 1000 + os.getpid() % 30_000
        self.session = IbSession(ib_factory or default_ib_factory,
                                 ConnectArgs(o["host"], o["port"], client_id, o["timeout_s"]), monotonic)
        self._contracts: dict[str, tuple[Any, str]] = {}
        self._contracts_lock = threading.Lock()
        self._pacers: dict[bool, SharedPacer] = {}
        self._pacers_lock = threading.Lock()
        self._limiter: ContractLimiter | None = None

    # -- pacing ------------------------------------------------------------------------------
    def hard_rules(self, timeframe: str) -> bool:
        """Whether IB's hard pacing rules bind this timeframe's requests: bars of 30 s or less, or
        every bar size with `pacing=strict` (a timeframe without an IB bar size counts as small)."""
        return hard_rules_apply(BAR_SIZES.get(timeframe), self.pacing_mode)

    def pacing_for(self, timeframe: str) -> tuple[float | None, tuple[tuple[int, float], ...] | None]:
        """The hard rules' 60 per 10 minutes, or the soft pace (`SOFT_RATE` a second)."""
        return self._pacing(self.hard_rules(timeframe))

    def _pacing(self, hard: bool) -> tuple[float | None, tuple[tuple[int, float], ...] | None]:
        return (self.rate_limit, self.rate_windows) if hard else (SOFT_RATE, None)

    def pacer_of(self, timeframe: str) -> SharedPacer:
        """The machine-wide log this timeframe's requests are paced with (the file the engine's
        pacer for that timeframe uses)."""
        return self._shared_pacer(self.hard_rules(timeframe))

    @property
    def pacer(self) -> SharedPacer:
        """The hard rules' machine-wide 60/10 min log."""
        return self._shared_pacer(True)

    def _shared_pacer(self, hard: bool) -> SharedPacer:
        with self._pacers_lock:
            if hard not in self._pacers:
                pacer = pacer_for(self.name, *self._pacing(hard), default=self._pacing(True), clock=self.clock)
                assert pacer is not None  # both pacings have a limit
                self._pacers[hard] = pacer
            return self._pacers[hard]

    @property
    def limiter(self) -> ContractLimiter:
        if self._limiter is None:
            self._limiter = limiter_for(self.clock)
        return self._limiter

    def _window_slot(self, timeframe: str, interrupt: Interrupt) -> None:
        """A slot in the timeframe's shared log for a request the engine did not pace (a window
        wider than one segment)."""
        if self.pacer_of(timeframe).wait_turn(lambda seconds: not self._sleep(seconds, interrupt)) is None:
            raise CallCancelled

    def _count_twice(self) -> None:
        """BID_ASK: a second stamp in the shared 10-minute log, now (never waits: the engine booked
        the first one only when there was room for two)."""
        self.pacer.stamp()  # the file pacer or the Redis one alike

    def _contract_rules(self, timeframe: str, key: str, request: str, interrupt: Interrupt,
                        max_wait: float = MAX_WAIT_IN_PLACE_S) -> None:
        """The hard rules' per-contract limits (none for bars IB only throttles softly)."""
        if not self.hard_rules(timeframe):
            return
        delay = self.limiter.book(key, request, max_wait=max_wait)
        if delay > max_wait:
            raise RateLimitedError(f"IB forbids an identical request within 15 s ({request})", retry_after=delay)
        if delay > 0 and self._sleep(delay, interrupt):
            raise CallCancelled
        if self.what_to_show == "BID_ASK":
            self._count_twice()

    # -- contracts ---------------------------------------------------------------------------
    def what_for(self, spec: ContractSpec) -> str:
        return self.what_to_show or ("BID" if spec.is_forex else "TRADES")

    def validate(self, symbol: str) -> None:
        """The symbol's format only: IB is asked on the first request (a run with nothing missing
        makes none)."""
        parse_symbol(symbol, self.options["exchange"], self.options["currency"])

    def contract(self, symbol: str, interrupt: Interrupt) -> tuple[Any, str]:
        """The qualified contract and its pacing key (conId, exchange, tick type)."""
        with self._contracts_lock:
            cached = self._contracts.get(symbol)
        if cached is not None:
            return cached
        spec = parse_symbol(symbol, self.options["exchange"], self.options["currency"])
        wanted = self._contract_factory(spec)
        answer = self.session.call(lambda ib: ib.qualifyContracts(wanted), interrupt)
        found = [c for c in (answer.value or []) if c is not None and not isinstance(c, list)
                 and getattr(c, "conId", 0)]
        if not found:
            err = classify(answer.errors, symbol)
            if isinstance(err, (TransientError, RateLimitedError)):
                raise err
            detail = "; ".join(f"error {code}: {text}" for _r, code, text in answer.errors) or "unknown or ambiguous"
            raise UnknownSymbolError(f"ib has no contract for {symbol} ({detail})")
        qualified = found[0]
        key = f"{qualified.conId}:{getattr(qualified, 'exchange', '')}:{self.what_for(spec)}"
        with self._contracts_lock:
            self._contracts[symbol] = (qualified, key)
        return qualified, key

    # -- requests ----------------------------------------------------------------------------
    def max_bars_for(self, timeframe: str) -> int:
        return max_bars(timeframe)

    def earliest(self, timeframe: str) -> int:
        return EARLIEST

    def check_window(self, timeframe: str, start: int, end: int, now: int) -> None:
        if timeframe not in BAR_SIZES:
            raise ValueError(f"ib has no {timeframe} bars (it has: {' '.join(BAR_SIZES)})")

    head_timestamp_is_request = True

    def head_timestamp(self, symbol: str, timeframe: str, interrupt: Interrupt | None = None) -> int:
        """reqHeadTimeStamp: the first bar IB has for the contract (its tick type and RTH setting),
        floored to the timeframe's bar start. The engine paces, retries and counts this request
        like a fetch; the per-contract rules are kept here."""
        return self._head(symbol, timeframe, interrupt or _Never())

    def _head(self, symbol: str, timeframe: str, interrupt: Interrupt) -> int:
        contract, key = self.contract(symbol, interrupt)
        what = key.rsplit(":", 1)[1]
        what = "BID" if what == "BID_ASK" else what
        self._contract_rules(timeframe, key, f"{key}:head:{self.options['use_rth']}", interrupt, max_wait=float("inf"))
        answer = self.session.call(
            lambda ib: ib.reqHeadTimeStamp(contract, whatToShow=what, useRTH=self.options["use_rth"], formatDate=2),
            interrupt)
        value = answer.value
        if isinstance(value, date):  # a datetime is a date too
            ts = bar_time(value, "1m")
            if timeframe == "1w":
                return ts - (ts - MONDAY) % WEEK
            return max(EARLIEST, ts - ts % timeframe_seconds(timeframe))
        err = classify(answer.errors, symbol)
        if isinstance(err, NoData):
            raise PermanentError(f"ib has no {what} data for {symbol} ({err})")
        if err is not None:
            raise err
        raise self._silence(answer, f"head timestamp of {symbol}")

    def _silence(self, answer: Answer[Any], what: str) -> TransientError:
        timeout = self.options["timeout_s"]
        if answer.elapsed >= timeout * 0.95:
            return TransientError(f"ib: request for {what} timed out after {timeout:g}s (no answer, no error)")
        return TransientError(f"ib answered nothing for {what} (no data, no error)")

    def fetch(self, symbol: str, timeframe: str, start: int, end: int, interrupt: Interrupt) -> list[Bar]:
        try:
            contract, key = self.contract(symbol, interrupt)
            plan = self.calendar.requests(timeframe, start, end)
            bars: list[Bar] = []
            for i, request in enumerate(plan):
                if i > 0:  # the engine paced one request per segment; the others pay their own slot
                    self._window_slot(timeframe, interrupt)
                bars += self._request(symbol, contract, key, timeframe, request, interrupt)
        except CallCancelled:
            return []
        by_ts = {b[0]: b for b in bars if start <= b[0] < end}
        return [by_ts[ts] for ts in sorted(by_ts)]

    def _request(self, symbol: str, contract: Any, key: str, timeframe: str, request: Request,
                 interrupt: Interrupt) -> list[Bar]:
        what = key.rsplit(":", 1)[1]
        end_dt = datetime.fromtimestamp(request.end, UTC)
        use_rth = self.options["use_rth"]
        self._contract_rules(timeframe, key, f"{key}:{request.end}:{request.duration}:{timeframe}:{use_rth}", interrupt)
        timeout = self.options["timeout_s"]
        answer = self.session.call(
            lambda ib: ib.reqHistoricalData(
                contract, endDateTime=end_dt, durationStr=request.duration, barSizeSetting=BAR_SIZES[timeframe],
                whatToShow=what, useRTH=use_rth, formatDate=2, timeout=timeout),
            interrupt)
        raw = list(answer.value or [])
        if raw:
            return [to_bar(b, timeframe) for b in raw]
        err = classify(answer.errors, symbol)
        if isinstance(err, NoData):
            return []
        if err is not None:
            raise err
        if answer.elapsed >= timeout * 0.95:
            raise self._silence(answer, f"{symbol} {timeframe} bars")
        return []  # an answer with no bars and no error: IB has none there

    def close(self) -> None:
        self.session.close()
