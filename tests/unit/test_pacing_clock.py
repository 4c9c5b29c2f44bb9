"""A wall clock stepped back (NTP, VM restore) must not stall requests (issue 13, item 7): stamps
the shared pacing log holds from before the step lie in the future, beyond anything a real
booking can reach, and count as expired. Time is injected; nothing sleeps."""

from __future__ import annotations

import json
from pathlib import Path

from ktrdr_collect.providers.pacing import SharedPacer, pacer_for


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


T = 1_700_000_000.0


def test_a_clock_stepped_back_an_hour_does_not_hold_requests(tmp_path: Path) -> None:
    clock = Clock(T)
    pacer = pacer_for("demo", 5.0, folder=tmp_path, clock=clock)
    assert pacer is not None
    for _ in range(10):
        assert pacer.wait_turn(lambda s: setattr(clock, "now", clock.now + s) or True) is not None
    clock.now -= 3600  # the clock is put back an hour
    waited: list[float] = []
    slot = pacer.wait_turn(lambda s: waited.append(s) or True)
    assert slot is not None and slot < clock.now + 1
    assert sum(waited) < 1


def test_future_stamps_from_a_stepped_clock_are_ignored_but_real_bookings_bind(tmp_path: Path) -> None:
    path = tmp_path / "log.json"
    path.write_text(json.dumps([T + 600 + i for i in range(20)]))  # written ten minutes "ahead"
    clock = Clock(T)
    pacer = SharedPacer(path, [(2, 1.0)], clock=clock)
    delay, slot = pacer.delay()
    assert delay == 0 and slot == T
    # bookings made now still chain: the third waits for the window
    pacer.reserve()
    third = pacer.reserve()
    assert 1.0 <= third - T <= 1.1


def test_a_far_booking_chain_under_a_slow_window_is_kept(tmp_path: Path) -> None:
    """One request in any 10 minutes: ten bookings reach 100 minutes ahead, legitimately."""
    clock = Clock(T)
    pacer = SharedPacer(tmp_path / "slow.json", [(1, 600.0)], clock=clock)
    slots = [pacer.reserve() for _ in range(10)]
    assert slots[-1] - T > 5000
    assert pacer.reserve() > slots[-1]
