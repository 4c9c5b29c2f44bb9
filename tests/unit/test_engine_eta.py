"""The ETA estimator (docs/eta.md), on an injected clock: no sleeps.

`PoolSim` drives a ProgressTracker the way the engine does (each of `workers` workers takes the next
symbol, plans it, then makes its requests one after another), as a discrete-event simulation.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import pytest

from ktrdr_collect.engine.eta import RequestRate, ServiceTime, pool_seconds
from ktrdr_collect.engine.progress import ProgressTracker
from tests.unit.fakes import ManualClock


class PoolSim:
    def __init__(self, n_symbols: int, segments: int, workers: int, duration: Callable[[float], float],
                 rate_limit: float | None = None) -> None:
        self.clock = ManualClock(0.0)
        self.symbols = [f"S{i:03d}" for i in range(n_symbols)]
        self.tracker = ProgressTracker(self.symbols, clock=self.clock, rate_limit=rate_limit)
        self.segments, self.duration = segments, duration
        self.todo = list(self.symbols)
        self.left: dict[str, int] = {}
        self.events: list[tuple[float, int, str]] = []
        self.seq = 0
        self.offset = 0.0  # paused time so far: the simulation itself runs on active time
        self.tracker.start()
        for _ in range(workers):
            self._take_next(0.0)

    def _request(self, symbol: str, at: float) -> None:
        self.tracker.request_made(symbol)
        self.seq += 1
        heapq.heappush(self.events, (at + self.duration(at), self.seq, symbol))

    def _take_next(self, at: float) -> None:
        if self.todo:
            symbol = self.todo.pop(0)
            self.tracker.symbol_started(symbol)
            self.tracker.planned(symbol, self.segments)
            self.left[symbol] = self.segments
            self._request(symbol, at)

    def run_until(self, active: float) -> None:
        while self.events and self.events[0][0] <= active:
            at, _, symbol = heapq.heappop(self.events)
            self.clock.now = at + self.offset
            self.tracker.segment_done(symbol, 10)
            self.left[symbol] -= 1
            if self.left[symbol]:
                self._request(symbol, at)
            else:
                self.tracker.symbol_finished(symbol, "completed")
                self._take_next(at)
        self.clock.now = active + self.offset

    def pause(self, seconds: float) -> None:
        self.tracker.pause()
        self.offset += seconds
        self.clock.advance(seconds)
        self.tracker.resume()

    @property
    def eta(self) -> float:
        eta = self.tracker.snapshot().eta_s
        assert eta is not None
        return eta


def finish_time(make: Callable[[], PoolSim]) -> float:
    """When the same (deterministic) run ends, in active time."""
    sim = make()
    last = 0.0
    while sim.events:
        last = sim.events[0][0]
        sim.run_until(last)
    return last


def test_steady_pool_eta_is_exact_between_completions() -> None:
    def make() -> PoolSim:
        return PoolSim(40, 5, 4, lambda at: 0.2)

    end = finish_time(make)
    assert end == pytest.approx(10.0)
    sim = make()
    for t in (1.0, 3.1, 5.05, 7.5, 9.3):
        sim.run_until(t)
        assert sim.eta == pytest.approx(end - t, abs=0.02), t


def test_eta_moves_between_completions_with_the_requests_in_flight() -> None:
    sim = PoolSim(40, 5, 4, lambda at: 0.2)
    sim.run_until(2.0)
    at_completion = sim.eta
    sim.run_until(2.1)  # halfway through the requests in flight
    assert sim.eta == pytest.approx(at_completion - 0.1, abs=0.01)


def test_paused_time_is_excluded_and_the_rate_carries_over() -> None:
    sim = PoolSim(40, 5, 4, lambda at: 0.2)
    sim.run_until(3.1)
    before = sim.eta
    sim.pause(600.0)
    assert sim.eta == before
    sim.run_until(4.1)  # one more active second at the same speed
    assert sim.eta == pytest.approx(before - 1.0, abs=0.02)


def test_a_slowdown_is_followed_within_seconds() -> None:
    def make() -> PoolSim:
        return PoolSim(40, 5, 4, lambda at: 0.15 if at < 3.75 else 0.3)

    end = finish_time(make)
    sim = make()
    sim.run_until(6.0)  # 2.25 s after latency doubled; the window holds 3.75 s at the old speed
    assert sim.eta == pytest.approx(end - 6.0, rel=0.05)
    plain = make()  # the same run with a plain 20 s window is still far off
    plain.tracker._rate.change_z = float("inf")
    plain.run_until(6.0)
    assert plain.eta < 0.85 * (end - 6.0)


def test_the_window_restarts_only_on_a_real_change() -> None:
    steady = RequestRate(window_s=20)
    for i in range(1, 400):
        steady.record(i * 0.05)
    assert steady.rate(20.0) == pytest.approx(20.0, rel=0.01)
    assert steady._marks[0][0] <= 0.05  # never restarted: the whole window is used
    changed = RequestRate(window_s=20)
    t = 0.0
    for _ in range(200):  # 20/s for 10 s
        t += 0.05
        changed.record(t)
    for _ in range(40):  # then 5/s
        t += 0.2
        changed.record(t)
    assert changed.rate(t) == pytest.approx(5.0, rel=0.05)


def test_known_rate_limit_bounds_the_rate() -> None:
    sim = PoolSim(40, 5, 4, lambda at: 0.01, rate_limit=5.0)
    sim.run_until(0.35)  # the pool alone would do 400 requests/s
    remaining = sim.tracker.remaining_requests()
    assert remaining is not None
    # (the 4 requests in flight count as nearly done)
    assert (remaining - 4) / 5.0 <= sim.eta <= remaining / 5.0


def test_unplanned_symbols_are_estimated_from_the_planned_ones() -> None:
    clock = ManualClock(0.0)
    t = ProgressTracker([f"S{i}" for i in range(10)], clock=clock)
    t.start()
    assert t.remaining_requests() is None  # nothing planned: nothing to go by
    t.symbol_started("S0")
    t.planned("S0", 3)
    assert t.remaining_requests() == 3 + 9 * 3
    for _ in range(3):  # one request a second
        t.request_made("S0")
        clock.advance(1.0)
        t.segment_done("S0", 1)
    t.symbol_finished("S0", "completed")
    t.symbol_started("S1")
    t.planned("S1", 5)
    assert t.remaining_requests() == 5 + 8 * 4  # the mean of 3 and 5 for each of the other 8
    assert t.snapshot().eta_s == pytest.approx(37.0, rel=0.01)


def test_tail_uses_the_slowest_symbol_not_the_whole_pool() -> None:
    def make() -> PoolSim:
        return PoolSim(5, 4, 4, lambda at: 0.1)  # the 5th symbol runs alone from 0.4 s to 0.8 s

    end = finish_time(make)
    assert end == pytest.approx(0.8)
    sim = make()
    sim.run_until(0.45)
    assert sim.eta == pytest.approx(0.35, abs=0.01)  # remaining / pool rate would say ~0.09


def test_pool_seconds_shares_pending_symbols_between_workers() -> None:
    assert pool_seconds([2, 1], 0, 0.0, 4, 0.5, 2.0) == 1.0  # the slowest running symbol
    assert pool_seconds([], 4, 12.0, 4, 0.5, 1.0) == 3.0  # one symbol of 3 requests each
    assert pool_seconds([1, 1], 3, 6.0, 2, 1.0, 1.0) == 5.0  # 1 + 2 rounds of 2 requests
    assert pool_seconds([0, 3], 1, 2.0, 2, 1.0, 1.0) == 3.0  # the idle worker takes it


def test_share_done_of_a_request_in_flight() -> None:
    equal = ServiceTime()
    for _ in range(5):
        equal.record(1.0)
    assert equal.share_done(0.25) == pytest.approx(0.25)
    jittery = ServiceTime()
    for d in (0.2, 1.8):
        jittery.record(d)
    # still running after 0.5 s: it is the long kind, 1.3 s to go of a 1 s mean
    assert jittery.share_done(0.5) == 0.0
    assert ServiceTime().share_done(5.0) == 0.0
