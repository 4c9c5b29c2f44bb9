"""IB pacing on an injected clock, per bar size.

With `pacing=strict` (and, in `auto`, for bars of 30 s or less) IB's hard rules: the 60-per-10-minutes
window (the engine's shared pacer with the provider's rate_windows), the per-contract rules
(ib_limits), BID_ASK counted twice. With `pacing=auto` for bars of a minute and more: the soft pace,
in its own shared log, and no per-contract rules. The fake IB of test_provider_ib checks every
request against the rules IB documents for its bar size and records violations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ktrdr_collect import paths
from ktrdr_collect.engine.cancellation import CancellationToken
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.providers.demo import DemoProvider
from ktrdr_collect.providers.ib import IbProvider
from ktrdr_collect.providers.ib_limits import MAX_OPEN, SOFT_RATE, ContractLimiter, bar_seconds, hard_rules_apply
from ktrdr_collect.providers.ib_plan import BAR_SIZES
from ktrdr_collect.providers.pacing import MARGIN, SharedPacer, log_name, pacer_for
from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.timeframes import DAY, TIMEFRAMES, parse_ts
from tests.providers.test_provider_ib import Clock, FakeIB, ib  # noqa: F401  (ib: the fixture)

T0 = parse_ts("2024-01-01")  # a Monday
STRICT_LOG = "ib.json"
SOFT_LOG = "ib-2per1s.json"


def engine_pacer(provider: IbProvider, clock: Clock, timeframe: str = "1m") -> SharedPacer:
    """What ProcessingEngine builds for a job of this timeframe (pacer_for), on the test's clock."""
    pacer = pacer_for(provider.name, *provider.pacing_for(timeframe),
                      default=(provider.rate_limit, provider.rate_windows), clock=clock)
    assert pacer is not None
    return pacer


def run_like_the_engine(provider: IbProvider, pacer: SharedPacer, clock: Clock, symbol: str, day: int,
                        timeframe: str = "1m") -> None:
    """One segment the way the pipeline makes it: wait for the shared pacer's slot, then fetch."""
    pacer.wait_turn(lambda seconds: clock.advance(seconds) or True)
    provider.fetch(symbol, timeframe, T0 + day * DAY, T0 + (day + 1) * DAY, CancellationToken())


def max_in_window(stamps: list[float], span: float) -> int:
    return max(sum(1 for t in stamps if s <= t < s + span) for s in stamps)


def stamps_in(log: str) -> list[float]:
    path = paths.shared_dir() / "pacing" / log
    return json.loads(path.read_text()) if path.exists() else []


# -- which rules, per bar size -----------------------------------------------------------------------


def test_hard_rules_are_for_bars_of_30_seconds_or_less() -> None:
    assert [bar_seconds(b) for b in ("1 secs", "30 secs", "1 min", "4 hours", "1 day", "1 week")] == [
        1, 30, 60, 14_400, 86_400, 604_800]
    assert hard_rules_apply("5 secs") and hard_rules_apply("30 secs")
    assert not hard_rules_apply("1 min") and not hard_rules_apply("1 day")
    assert hard_rules_apply("1 day", "strict") and hard_rules_apply(None)  # unknown bar size: hard
    with pytest.raises(ValueError, match="not an IB bar size"):
        bar_seconds("1 fortnight")


def test_pacing_per_timeframe_auto_and_strict(ib: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    auto, _ = ib()
    strict, _ = ib(pacing="strict")
    hard = (None, ((60, 600.0),))
    for tf in TIMEFRAMES:  # all of ours are a minute or more
        assert auto.pacing_for(tf) == (SOFT_RATE, None)
        assert strict.pacing_for(tf) == hard
    monkeypatch.setitem(BAR_SIZES, "30s", "30 secs")  # a future small-bar timeframe gets the hard rules
    assert auto.pacing_for("30s") == hard and auto.hard_rules("30s")
    assert auto.pacing_for("5s") == hard  # no IB bar size for it: treated as small
    bid_ask, _ = ib(what_to_show="BID_ASK")
    assert bid_ask.pacing_for("1h") == (SOFT_RATE, None) and bid_ask.pacing_for("30s") == (None, ((59, 600.0),))


def test_strict_and_soft_keep_separate_shared_logs(ib: Any) -> None:  # noqa: F811
    auto, _ = ib()
    strict, _ = ib(pacing="strict")
    bid_ask, _ = ib(what_to_show="BID_ASK")
    assert auto.pacer_of("1h").path.name == SOFT_LOG == bid_ask.pacer_of("1d").path.name
    assert strict.pacer_of("1h").path.name == STRICT_LOG == auto.pacer.path.name == bid_ask.pacer.path.name
    assert abs(auto.pacer_of("1h").rate - SOFT_RATE / (1 + MARGIN)) < 1e-12
    assert log_name("demo", (5.0, None), (5.0, None)) == "demo" and log_name("demo", (5.0, None)) == "demo"


# -- the hard rules ---------------------------------------------------------------------------------------


def test_the_shared_window_allows_60_requests_in_any_10_minutes(home: Path) -> None:
    clock = Clock(start=1_000_000.0)
    pacer = SharedPacer(home / "ib.json", ((60, 600.0),), clock=clock)
    starts = []
    for _ in range(150):
        delay, slot = pacer.delay()
        clock.advance(delay)
        pacer.confirm(slot)
        starts.append(clock() - 1_000_000.0)
    assert max_in_window(starts, 600.0) == 60
    span = 600 * (1 + MARGIN)
    assert starts[59] == 0 and starts[60] == starts[119] == span and abs(starts[120] - 2 * span) < 1e-6
    assert abs(pacer.rate - 60 / (600 * (1 + MARGIN))) < 1e-12


def test_per_contract_rules(home: Path) -> None:
    clock = Clock(start=1_000_000.0)
    limiter = ContractLimiter(home / "ib-contracts.json", clock)
    waits = [limiter.book("AAPL", f"r{i}") for i in range(6)]
    # a 6th within 2 s would be a violation
    assert waits[:5] == [0.0] * 5 and abs(waits[5] - 2 * (1 + MARGIN)) < 1e-9
    assert limiter.book("MSFT", "m0") == 0.0  # another contract is not held up
    clock.advance(3.0)
    identical = 15 * (1 + MARGIN) - 3.0  # identical: 15 s (+ the margin) after the first
    assert abs(limiter.book("AAPL", "r0") - identical) < 1e-6
    assert abs(limiter.book("AAPL", "r1", max_wait=10.0) - identical) < 1e-6  # too long: not booked...
    clock.advance(identical)
    assert limiter.book("AAPL", "r1", max_wait=10.0) == 0.0  # ...so it is free once the time has come


def test_strict_many_symbols_through_the_provider_keep_every_rule(ib: Any) -> None:  # noqa: F811
    provider, fake = ib(pacing="strict")  # the fake enforces the hard rules on every bar size
    pacer = engine_pacer(provider, fake.clock)
    t0 = fake.clock()
    for i in range(130):
        run_like_the_engine(provider, pacer, fake.clock, ("AAPL", "MSFT", "EUR.USD")[i % 3], i // 3)
    assert len(fake.requests) == 130 and fake.violations == []
    starts = [r["at"] - t0 for r in fake.requests]
    assert max_in_window(starts, 600.0) == 60
    assert 2 * 600 * (1 + MARGIN) <= starts[-1] < 2 * 600 * (1 + MARGIN) + 60


def test_strict_one_contract_back_to_back_waits_for_the_two_second_rule(ib: Any) -> None:  # noqa: F811
    provider, fake = ib(pacing="strict")
    pacer = engine_pacer(provider, fake.clock)
    for day in range(12):
        run_like_the_engine(provider, pacer, fake.clock, "AAPL", day)
    assert fake.violations == [] and len(fake.requests) == 12
    starts = [r["at"] for r in fake.requests]
    assert all(b - a >= 2.0 for a, b in zip(starts, starts[5:], strict=False))


def test_strict_bid_ask_counts_twice(ib: Any) -> None:  # noqa: F811
    provider, fake = ib(what_to_show="BID_ASK", pacing="strict")
    pacer = engine_pacer(provider, fake.clock)
    t0 = fake.clock()
    for i in range(45):
        run_like_the_engine(provider, pacer, fake.clock, ("AAPL", "MSFT")[i % 2], i // 2)
    assert fake.violations == [] and all(r["what"] == "BID_ASK" for r in fake.requests)
    starts = [r["at"] - t0 for r in fake.requests]
    assert max_in_window(starts, 600.0) == 30  # 30 requests = 60 of IB's count


def test_strict_bid_ask_job_and_trades_job_share_the_budget(ib: Any) -> None:  # noqa: F811
    fake = FakeIB(Clock(), hard_everywhere=True)
    trades, _ = ib(fake, pacing="strict")
    bid_ask, _ = ib(fake, what_to_show="BID_ASK", pacing="strict")
    pacers = {id(p): engine_pacer(p, fake.clock) for p in (trades, bid_ask)}
    for i in range(80):
        p = (trades, bid_ask)[i % 2]
        run_like_the_engine(p, pacers[id(p)], fake.clock, "EUR.USD" if p is trades else "AAPL", i)
    assert fake.violations == [] and len(fake.requests) == 80


# -- the soft pace --------------------------------------------------------------------------------------


def test_auto_paces_minute_bars_softly_and_ib_refuses_nothing(ib: Any) -> None:  # noqa: F811
    """130 requests of 1m bars: 2 a second (the pacer's margin aside), no per-contract waits, not the 3.4 h
    the hard rules would take; the fake (IB as documented) sees no violation and one open request at a time."""
    provider, fake = ib()
    pacer = engine_pacer(provider, fake.clock)
    assert pacer.path.name == SOFT_LOG
    t0 = fake.clock()
    for i in range(130):
        run_like_the_engine(provider, pacer, fake.clock, "AAPL", i)  # one contract, back to back
    starts = [r["at"] - t0 for r in fake.requests]
    assert len(starts) == 130 and fake.violations == [] and fake.max_open == 1 <= MAX_OPEN
    assert max_in_window(starts, 1.0) == 2
    assert 129 / SOFT_RATE <= starts[-1] < 130 / SOFT_RATE * (1 + MARGIN)
    assert stamps_in("ib-contracts.json") == [] and stamps_in(STRICT_LOG) == []  # no hard-rule bookkeeping


def test_auto_bid_ask_is_not_counted_twice_for_minute_bars(ib: Any) -> None:  # noqa: F811
    provider, fake = ib(what_to_show="BID_ASK")
    pacer = engine_pacer(provider, fake.clock, "1h")
    for i in range(6):
        run_like_the_engine(provider, pacer, fake.clock, "AAPL", 30 * i, "1h")
    assert len(fake.requests) == 6 and not fake.violations and stamps_in(STRICT_LOG) == []


# -- through the engine ------------------------------------------------------------------------------------


def _engine(provider: IbProvider, home: Path) -> ProcessingEngine:
    return ProcessingEngine(provider, CsvStore(home / "data"), workers=2)


@pytest.mark.parametrize(("pacing", "used", "unused"), [("auto", SOFT_LOG, STRICT_LOG),
                                                        ("strict", STRICT_LOG, SOFT_LOG)])
def test_the_engine_paces_a_1h_job_by_its_bar_size(ib: Any, home: Path, pacing: str, used: str,  # noqa: F811
                                                     unused: str) -> None:
    """A 1h job goes through the soft log; with `-o pacing=strict` through the hard rules' one."""
    provider, fake = ib(clock=Clock(real=True), pacing=pacing)
    engine = _engine(provider, home)
    assert engine.pacer_of("1h").path.name == used and engine.pacer.path.name == STRICT_LOG
    (result,) = engine.process_batch(["AAPL"], "1h", start="2024-01-01", end="2024-03-01")
    assert result.ok and result.requests == 2 and not fake.violations
    assert len(stamps_in(used)) == 2 and stamps_in(unused) == []


def test_the_engine_builds_one_pacer_per_timeframe_and_keeps_an_injected_one(ib: Any, home: Path) -> None:  # noqa: F811
    provider, _ = ib()
    engine = _engine(provider, home)
    assert engine.pacer_of("1h") is engine.pacer_of("1h")  # built once per timeframe
    assert engine.pacer_of("1h").path == engine.pacer_of("1d").path  # one soft log for all of them
    assert engine.pacer_of("1h") is not engine.pacer
    injected = SharedPacer(home / "mine.json", [(1, 1.0)])
    assert ProcessingEngine(provider, CsvStore(home / "d"), pacer=injected).pacer_of("1h") is injected
    demo = ProcessingEngine(DemoProvider({"rate_limit": 5}), CsvStore(home / "d2"))
    assert demo.pacer_of("1h") is demo.pacer  # the default hook: the provider's one pacing


@pytest.mark.parametrize(("pacing", "bound_rate"), [("strict", 60 / 600), ("auto", SOFT_RATE)])
def test_eta_at_start_is_the_pacing_bound(ib: Any, home: Path, pacing: str, bound_rate: float) -> None:  # noqa: F811
    """100 symbols x 13 requests (a year of 1h): the ETA a new job shows is requests / the pace + margin."""
    provider, _ = ib(pacing=pacing)
    now = [0.0]
    engine = ProcessingEngine(provider, CsvStore(home / "data"), clock=lambda: now[0])
    symbols = [f"S{i:03d}" for i in range(100)]
    tracker = engine.new_tracker(symbols, "1h")
    tracker.start()
    for s in symbols:
        tracker.planned(s, 13)
    rate = engine.rate_limit_for("1h")
    assert rate is not None and abs(rate - bound_rate / (1 + MARGIN)) < 1e-12
    for i in range(4):
        now[0] += 1 / rate
        tracker.request_made(symbols[i])
        tracker.segment_done(symbols[i], 150)
    eta = tracker.snapshot().eta_s
    bound = (1300 - 4) / bound_rate
    assert eta is not None and 1.0 <= eta / bound <= 1.05


def test_a_trackers_eta_cap_is_the_pacing_of_its_timeframe(ib: Any, home: Path) -> None:  # noqa: F811
    """The job runner makes its tracker for the job's timeframe: a 1h job's ETA has the soft cap."""
    provider, _ = ib(clock=Clock(real=True))
    engine = _engine(provider, home)
    assert engine.new_tracker(["AAPL"])._rate.limit == engine.rate_limit_for() == engine.pacer.rate
    soft = engine.new_tracker(["AAPL"], "1h")._rate.limit
    assert soft == engine.rate_limit_for("1h") == engine.pacer_of("1h").rate and soft > engine.pacer.rate
