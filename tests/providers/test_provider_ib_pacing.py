"""IB pacing on an injected clock: the 60-per-10-minutes window (the engine's shared pacer with the
provider's rate_windows), the per-contract rules (ib_limits), BID_ASK counted twice, and the ETA.
The fake IB of test_provider_ib checks every request against IB's rules and records violations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ktrdr_collect import paths
from ktrdr_collect.engine.cancellation import CancellationToken
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.providers.ib import IbProvider
from ktrdr_collect.providers.ib_limits import ContractLimiter
from ktrdr_collect.providers.pacing import MARGIN, SharedPacer
from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.timeframes import DAY, parse_ts
from tests.providers.test_provider_ib import Clock, FakeIB, ib  # noqa: F401  (ib: the fixture)

T0 = parse_ts("2024-01-01")  # a Monday


def engine_pacer(provider: IbProvider, clock: Clock) -> SharedPacer:
    """What ProcessingEngine builds (pacer_for), on the test's clock."""
    return SharedPacer(paths.shared_dir() / "pacing" / "ib.json", provider.rate_windows, clock=clock)


def run_like_the_engine(provider: IbProvider, pacer: SharedPacer, clock: Clock, symbol: str, day: int) -> None:
    """One segment the way the pipeline makes it: wait for the shared pacer's slot, then fetch."""
    pacer.wait_turn(lambda seconds: clock.advance(seconds) or True)
    provider.fetch(symbol, "1m", T0 + day * DAY, T0 + (day + 1) * DAY, CancellationToken())


def max_in_window(stamps: list[float], span: float) -> int:
    return max(sum(1 for t in stamps if s <= t < s + span) for s in stamps)


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


def test_many_symbols_through_the_provider_keep_every_rule(ib: Any) -> None:  # noqa: F811
    provider, fake = ib()
    pacer = engine_pacer(provider, fake.clock)
    t0 = fake.clock()
    for i in range(130):
        run_like_the_engine(provider, pacer, fake.clock, ("AAPL", "MSFT", "EUR.USD")[i % 3], i // 3)
    assert len(fake.requests) == 130 and fake.violations == []
    starts = [r["at"] - t0 for r in fake.requests]
    assert max_in_window(starts, 600.0) == 60
    assert 2 * 600 * (1 + MARGIN) <= starts[-1] < 2 * 600 * (1 + MARGIN) + 60


def test_one_contract_back_to_back_waits_for_the_two_second_rule(ib: Any) -> None:  # noqa: F811
    provider, fake = ib()
    pacer = engine_pacer(provider, fake.clock)
    for day in range(12):
        run_like_the_engine(provider, pacer, fake.clock, "AAPL", day)
    assert fake.violations == [] and len(fake.requests) == 12
    starts = [r["at"] for r in fake.requests]
    assert all(b - a >= 2.0 for a, b in zip(starts, starts[5:], strict=False))


def test_bid_ask_counts_twice(ib: Any) -> None:  # noqa: F811
    provider, fake = ib(what_to_show="BID_ASK")
    pacer = engine_pacer(provider, fake.clock)
    t0 = fake.clock()
    for i in range(45):
        run_like_the_engine(provider, pacer, fake.clock, ("AAPL", "MSFT")[i % 2], i // 2)
    assert fake.violations == [] and all(r["what"] == "BID_ASK" for r in fake.requests)
    starts = [r["at"] - t0 for r in fake.requests]
    assert max_in_window(starts, 600.0) == 30  # 30 requests = 60 of IB's count


def test_a_bid_ask_job_and_a_trades_job_share_the_budget(ib: Any) -> None:  # noqa: F811
    fake = FakeIB(Clock())
    trades, _ = ib(fake)
    bid_ask, _ = ib(fake, what_to_show="BID_ASK")
    pacers = {id(p): engine_pacer(p, fake.clock) for p in (trades, bid_ask)}
    for i in range(80):
        p = (trades, bid_ask)[i % 2]
        run_like_the_engine(p, pacers[id(p)], fake.clock, "EUR.USD" if p is trades else "AAPL", i)
    assert fake.violations == [] and len(fake.requests) == 80


def test_eta_at_start_is_the_pacing_bound(ib: Any, home: Path) -> None:  # noqa: F811
    """100 symbols x 13 requests (a year of 1h): the ETA a new job shows is requests / (60 per 600 s + margin)."""
    provider, _ = ib()
    now = [0.0]
    engine = ProcessingEngine(provider, CsvStore(home / "data"), clock=lambda: now[0])
    symbols = [f"S{i:03d}" for i in range(100)]
    tracker = engine.new_tracker(symbols)
    tracker.start()
    for s in symbols:
        tracker.planned(s, 13)
    assert engine.pacer is not None
    step = 1 / engine.pacer.rate
    for i in range(4):
        now[0] += step
        tracker.request_made(symbols[i])
        tracker.segment_done(symbols[i], 150)
    eta = tracker.snapshot().eta_s
    bound = (1300 - 4) / (60 / 600)
    assert eta is not None and 1.0 <= eta / bound <= 1.05
