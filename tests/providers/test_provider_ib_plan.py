"""Request planning of the ib provider: IB's step-size table, the calendar, requests per window."""

from __future__ import annotations

import math
import random

import pytest

from ktrdr_collect.providers.ib_plan import (
    BAR_SIZES,
    REQUEST_DAYS,
    STEP_TABLE,
    IbCalendar,
    max_bars,
    max_duration,
)
from ktrdr_collect.storage.timeframes import DAY, TIMEFRAMES, WEEK, parse_ts, timeframe_seconds

SUNDAY_OPEN = parse_ts("2024-01-07T20:00:00Z")  # the week's first possible bar
MONDAY = parse_ts("2024-01-01")


def test_the_largest_duration_the_step_table_allows_for_each_bar_size() -> None:
    assert {tf: max_duration(tf)[0] for tf in TIMEFRAMES} == {
        "1m": "1 D", "5m": "1 W", "15m": "1 W", "30m": "1 M", "1h": "1 M", "4h": "1 M", "1d": "1 Y", "1w": "1 Y"}
    assert REQUEST_DAYS == {"1m": 1, "5m": 7, "15m": 7, "30m": 30, "1h": 30, "4h": 30, "1d": 365, "1w": 365}
    assert {tf: max_bars(tf) for tf in TIMEFRAMES} == {
        "1m": 1440, "5m": 2016, "15m": 672, "30m": 1440, "1h": 720, "4h": 180, "1d": 365, "1w": 53}
    # "a few thousand bars" at most per request
    assert all(max_bars(tf) <= 2016 for tf in TIMEFRAMES)
    # every bar size is allowed by the row we picked, and no longer row allows it
    for tf in TIMEFRAMES:
        step = timeframe_seconds(tf)
        name, span = max_duration(tf)
        assert all(not (lo <= step <= hi) for n, s, lo, hi in STEP_TABLE if s > span), tf
    assert BAR_SIZES["1h"] == "1 hour" and BAR_SIZES["1m"] == "1 min"


@pytest.mark.parametrize("days", [1, 7, 30, 90, 365, 730])
@pytest.mark.parametrize("tf", ["1m", "5m", "15m", "30m", "1h", "4h", "1d"])
def test_an_always_open_window_takes_the_fewest_requests_the_table_allows(tf: str, days: int) -> None:
    """With no closed hours, N days of bars need exactly ceil(N / request days) requests."""
    cal = IbCalendar(weekends=True)
    segments = cal.split(tf, MONDAY, MONDAY + days * DAY, max_bars(tf))
    assert len(segments) == math.ceil(days / REQUEST_DAYS[tf])
    assert sum(len(cal.requests(tf, *s)) for s in segments) == len(segments)


@pytest.mark.parametrize(("tf", "weekly", "four_weeks", "year_2023"), [
    ("1m", 6, 24, 313),  # Sunday 20:00 .. Saturday 02:00 UTC is 5 days 6 hours: 6 one-day requests
    ("5m", 1, 4, 53),
    ("15m", 1, 4, 53),
    ("30m", 1, 1, 13),
    ("1h", 1, 1, 13),
    ("4h", 1, 1, 13),
    ("1d", 1, 1, 1),
    ("1w", 1, 1, 1),
])
def test_requests_for_n_days_of_each_bar_size(tf: str, weekly: int, four_weeks: int, year_2023: int) -> None:
    cal = IbCalendar()

    def requests(start: int, end: int) -> int:
        return sum(len(cal.requests(tf, *s)) for s in cal.split(tf, start, end, max_bars(tf)))

    assert requests(SUNDAY_OPEN, SUNDAY_OPEN + WEEK) == weekly
    assert requests(SUNDAY_OPEN, SUNDAY_OPEN + 4 * WEEK) == four_weeks
    assert requests(parse_ts("2023-01-01"), parse_ts("2024-01-01")) == year_2023


def test_no_bar_starts_in_the_weekend_hole_and_a_gap_inside_it_costs_nothing() -> None:
    cal = IbCalendar()
    sat, sun = parse_ts("2024-01-06T02:00:00Z"), parse_ts("2024-01-07T20:00:00Z")
    assert cal.count("1m", sat, sun) == 0 and cal.split("1h", sat, sun, 720) == []
    assert cal.count("1d", parse_ts("2024-01-06"), parse_ts("2024-01-08")) == 0
    assert list(cal.bar_times("1h", sat - 2 * 3600, sun + 3600)) == [sat - 2 * 3600, sat - 3600, sun]
    assert IbCalendar(weekends=True).count("1h", sat, sun) == 42


def test_planned_segments_tile_the_window_and_each_request_covers_its_segment() -> None:
    rng = random.Random(7)
    for weekends in (False, True):
        cal = IbCalendar(weekends=weekends)
        for _ in range(300):
            tf = rng.choice(TIMEFRAMES)
            step = timeframe_seconds(tf)
            start = parse_ts("2019-01-01") + rng.randrange(0, 5 * 365 * DAY, 60 if rng.random() < 0.5 else step)
            end = start + rng.randrange(step, 3 * REQUEST_DAYS[tf] * DAY + 2 * step)
            segments = cal.split(tf, start, end, max_bars(tf))
            bars = list(cal.bar_times(tf, start, end))
            if not bars:
                assert segments == []
                continue
            assert segments[0][0] == start and segments[-1][1] == end
            assert all(a[1] == b[0] for a, b in zip(segments, segments[1:], strict=False))
            for lo, hi in segments:
                inside = [t for t in bars if lo <= t < hi]
                assert 1 <= len(inside) <= max_bars(tf)
                (req,) = cal.requests(tf, lo, hi)  # one request per segment
                assert 1 <= req.days <= REQUEST_DAYS[tf]
                # from where a bar could start (lo, or the end of the weekend it falls in) to past the last one
                assert req.end - req.days * DAY <= cal.open_from(tf, lo) <= inside[0]
                assert inside[-1] < req.end <= hi


def test_a_wide_window_becomes_several_requests_newest_first() -> None:
    cal = IbCalendar()
    reqs = cal.requests("1h", MONDAY, MONDAY + 75 * DAY)
    assert [r.duration for r in reqs] == ["30 D", "30 D", "15 D"]
    assert reqs[0].end == MONDAY + 75 * DAY and reqs[1].end == reqs[0].end - 30 * DAY
    assert cal.requests("1h", parse_ts("2024-01-06T03:00:00Z"), parse_ts("2024-01-07T19:00:00Z")) == []
