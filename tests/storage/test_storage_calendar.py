import bisect
import math
import random
import time as clock
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from ktrdr_collect.storage.calendar import (
    DEMO_CALENDAR,
    AlwaysOpenCalendar,
    Calendar,
    RunCalendar,
    SessionCalendar,
)
from ktrdr_collect.storage.timeframes import TIMEFRAMES, format_ts, parse_ts, timeframe_seconds

DAY = 86400
INTRADAY = ("1m", "5m", "15m", "30m", "1h", "4h")
HOLIDAYS = frozenset({date(2024, 1, 15), date(2024, 7, 4), date(2024, 3, 11), date(2023, 12, 25)})


def session_reference(
    tz: str,
    session_open: str,
    session_close: str,
    weekdays: frozenset[int],
    holidays: frozenset[date],
    daily_at: str,
    first: int | None,
) -> Callable[[str, int, int], list[int]]:
    """A slow, independent model of SessionCalendar.bar_times, built on datetime."""
    zone = ZoneInfo(tz)
    opens, closes = time.fromisoformat(session_open), time.fromisoformat(session_close)

    def instant(day: date, at: time) -> int:
        return int(datetime.combine(day, at, tzinfo=zone).timestamp())

    def times(tf: str, start: int, end: int) -> list[int]:
        step = timeframe_seconds(tf)
        found: list[int] = []
        day = datetime.fromtimestamp(start, UTC).date() - timedelta(days=2)
        last = datetime.fromtimestamp(end, UTC).date() + timedelta(days=2)
        while day <= last:
            trading = day.weekday() in weekdays and day not in holidays
            midnight = int(datetime.combine(day, time(), tzinfo=UTC).timestamp())
            if tf == "1w":
                if day.weekday() == 0:
                    found.append(midnight if daily_at == "midnight" else instant(day, opens))
            elif tf == "1d":
                if trading:
                    found.append(midnight if daily_at == "midnight" else instant(day, opens))
            elif trading:
                ts, stop = instant(day, opens), instant(day, closes)
                while ts < stop:
                    found.append(ts)
                    ts += step
            day += timedelta(days=1)
        lo = start if first is None else max(start, first)
        return sorted(t for t in found if lo <= t < end)

    return times


def slow_always_open_times(first: int | None) -> Callable[[str, int, int], list[int]]:
    # range() over every second is too slow for long windows: scan aligned candidates instead.
    def times(tf: str, start: int, end: int) -> list[int]:
        step = timeframe_seconds(tf)
        phase = 4 * DAY if tf == "1w" else 0
        lo = start if first is None else max(start, first)
        t = phase + ((lo - phase) // step) * step
        out = []
        while t < end:
            if t >= lo:
                out.append(t)
            t += step
        return out

    return times


FIRST = parse_ts("2024-02-07T15:17:00Z")
SESSION_CASES: list[tuple[str, dict]] = [
    ("demo", {}),
    (
        "new_york",
        {"tz": "America/New_York", "session_open": "09:30", "session_close": "16:00", "holidays": HOLIDAYS},
    ),
    (
        "new_york_open_first",
        {
            "tz": "America/New_York",
            "session_open": "09:30",
            "session_close": "16:00",
            "daily_at": "open",
            "first": FIRST,
        },
    ),
    (
        "sydney_sunday",
        {
            "tz": "Australia/Sydney",
            "session_open": "07:05",
            "session_close": "23:50",
            "weekdays": frozenset({0, 2, 6}),
            "daily_at": "open",
        },
    ),
    ("tokyo_short", {"tz": "Asia/Tokyo", "session_open": "09:00", "session_close": "11:31"}),
]
DEFAULTS = {
    "tz": "UTC",
    "session_open": "14:30",
    "session_close": "21:00",
    "weekdays": frozenset(range(5)),
    "holidays": frozenset(),
    "daily_at": "midnight",
    "first": None,
}


def all_cases() -> list[tuple[str, Calendar, Callable[[str, int, int], list[int]]]]:
    cases: list[tuple[str, Calendar, Callable[[str, int, int], list[int]]]] = []
    for name, kwargs in SESSION_CASES:
        params = {**DEFAULTS, **kwargs}
        cases.append((name, SessionCalendar(**params), session_reference(**params)))
    cases.append(("always_open", AlwaysOpenCalendar(), slow_always_open_times(None)))
    cases.append(("always_open_first", AlwaysOpenCalendar(first=FIRST), slow_always_open_times(FIRST)))
    return cases


CASES = all_cases()
WINDOW_LO = parse_ts("2023-12-20")
WINDOW_HI = parse_ts("2024-12-10")


def random_window(rng: random.Random) -> tuple[int, int]:
    start = rng.randrange(WINDOW_LO, WINDOW_HI)
    if rng.random() < 0.3:
        start -= start % 60
    length = rng.choice([0, 1, 59, 3600, DAY, 3 * DAY, 10 * DAY, 40 * DAY]) + rng.randrange(0, 2 * DAY)
    return start, start + length


@pytest.mark.parametrize(("name", "cal", "reference"), CASES, ids=[c[0] for c in CASES])
def test_bar_times_and_count_match_reference(name: str, cal: Calendar, reference: Callable) -> None:
    rng = random.Random(name)
    for _ in range(40):
        start, end = random_window(rng)
        for tf in TIMEFRAMES:
            expected = reference(tf, start, end)
            got = list(cal.bar_times(tf, start, end))
            assert got == expected, (name, tf, format_ts(start), format_ts(end))
            assert cal.count(tf, start, end) == len(expected)
            assert cal.first_bar(tf, start) == (expected[0] if expected else cal.first_bar(tf, end))


@pytest.mark.parametrize(("name", "cal", "reference"), CASES, ids=[c[0] for c in CASES])
def test_split_tiles_minimally(name: str, cal: Calendar, reference: Callable) -> None:
    rng = random.Random(f"split-{name}")
    for _ in range(150):
        start, end = random_window(rng)
        tf = rng.choice(TIMEFRAMES)
        max_bars = rng.choice([1, 2, 3, 7, 50, 389, 390, 391, 1000, 5000])
        times = list(cal.bar_times(tf, start, end))
        segments = cal.split(tf, start, end, max_bars)
        if not times:
            assert segments == []
            continue
        assert len(segments) == math.ceil(len(times) / max_bars)
        assert segments[0][0] == start
        assert segments[-1][1] == end
        for (_, prev_end), (next_start, _) in zip(segments, segments[1:], strict=False):
            assert prev_end == next_start
        for k, (seg_start, seg_end) in enumerate(segments):
            lo, hi = bisect.bisect_left(times, seg_start), bisect.bisect_left(times, seg_end)
            assert 1 <= hi - lo <= max_bars
            if k > 0:
                assert times[lo] == seg_start
            if k < 20:
                assert cal.count(tf, seg_start, seg_end) == hi - lo


def test_split_rejects_bad_max_bars() -> None:
    with pytest.raises(ValueError):
        DEMO_CALENDAR.split("1m", 0, DAY, 0)


def test_count_is_fast_for_five_years_of_minutes() -> None:
    cal = SessionCalendar(tz="America/New_York", session_open="09:30", session_close="16:00")
    start, end = parse_ts("2019-01-01"), parse_ts("2024-01-01")
    cal.count("1m", start, end)  # warm the per-day cache
    began = clock.perf_counter()
    n = cal.count("1m", start, end)
    segments = cal.split("1m", start, end, 5000)
    elapsed = clock.perf_counter() - began
    assert n == 1304 * 390  # 2019..2023 has 1304 weekdays
    assert len(segments) == math.ceil(n / 5000)
    assert elapsed < 0.5  # a few ms expected


def test_dst_moves_the_utc_open() -> None:
    cal = SessionCalendar(tz="America/New_York", session_open="09:30", session_close="16:00", daily_at="open")
    winter, summer = parse_ts("2024-01-10"), parse_ts("2024-07-10")
    assert format_ts(cal.first_bar("1m", winter) or 0) == "2024-01-10T14:30:00Z"
    assert format_ts(cal.first_bar("1m", summer) or 0) == "2024-07-10T13:30:00Z"
    assert cal.count("1m", winter, winter + DAY) == cal.count("1m", summer, summer + DAY) == 390
    assert list(cal.bar_times("1d", summer, summer + DAY)) == [parse_ts("2024-07-10T13:30:00Z")]
    # The switch: Friday 2024-03-08 is still EST, Monday 2024-03-11 is EDT.
    hours = [format_ts(t) for t in cal.bar_times("1h", parse_ts("2024-03-08"), parse_ts("2024-03-12"))]
    assert hours[0] == "2024-03-08T14:30:00Z"
    assert hours[7] == "2024-03-11T13:30:00Z"
    assert len(hours) == 14
    assert list(cal.bar_times("1w", parse_ts("2024-03-11"), parse_ts("2024-03-12"))) == [
        parse_ts("2024-03-11T13:30:00Z")
    ]


def test_demo_calendar_facts() -> None:
    day = parse_ts("2024-01-02")  # a Tuesday
    assert DEMO_CALENDAR.count("1m", day, day + DAY) == 390
    assert [format_ts(t)[11:16] for t in DEMO_CALENDAR.bar_times("1h", day, day + DAY)] == [
        "14:30",
        "15:30",
        "16:30",
        "17:30",
        "18:30",
        "19:30",
        "20:30",
    ]
    assert [format_ts(t)[11:16] for t in DEMO_CALENDAR.bar_times("4h", day, day + DAY)] == ["14:30", "18:30"]
    assert list(DEMO_CALENDAR.bar_times("1d", day, day + DAY)) == [day]
    saturday = parse_ts("2024-01-06")
    for tf in ("1m", "1h", "1d"):
        assert DEMO_CALENDAR.count(tf, saturday, saturday + 2 * DAY) == 0
        assert DEMO_CALENDAR.split(tf, saturday, saturday + 2 * DAY, 10) == []
    assert DEMO_CALENDAR.first_bar("1m", 0) == parse_ts("2000-01-03T14:30:00Z")
    assert DEMO_CALENDAR.first_bar("1d", 0) == parse_ts("2000-01-03")
    assert DEMO_CALENDAR.first_bar("1w", 0) == parse_ts("2000-01-03")
    assert DEMO_CALENDAR.count("1d", 0, parse_ts("2000-01-03")) == 0
    weeks = list(DEMO_CALENDAR.bar_times("1w", parse_ts("2024-01-01"), parse_ts("2024-02-01")))
    assert [datetime.fromtimestamp(t, UTC).weekday() for t in weeks] == [0] * 5
    assert weeks[0] == parse_ts("2024-01-01")
    assert DEMO_CALENDAR.first_bar("1m", saturday) == parse_ts("2024-01-08T14:30:00Z")


def test_holidays_remove_days_but_not_weeks() -> None:
    cal = SessionCalendar(holidays=frozenset({date(2024, 1, 1)}))
    week = parse_ts("2024-01-01"), parse_ts("2024-01-08")
    assert cal.count("1d", *week) == 4
    assert cal.count("1m", *week) == 4 * 390
    assert list(cal.bar_times("1w", *week)) == [parse_ts("2024-01-01")]


def test_always_open_calendar() -> None:
    cal = AlwaysOpenCalendar()
    saturday = parse_ts("2024-01-06")
    assert cal.count("1m", saturday, saturday + DAY) == 1440
    assert cal.count("4h", saturday, saturday + DAY) == 6
    assert list(cal.bar_times("1d", saturday, saturday + 2 * DAY)) == [saturday, saturday + DAY]
    assert cal.first_bar("1w", saturday) == parse_ts("2024-01-08")
    assert cal.first_bar("1m", saturday + 1) == saturday + 60
    assert isinstance(cal, Calendar) and isinstance(DEMO_CALENDAR, Calendar)


def test_first_bar_none_when_never_trading() -> None:
    cal = SessionCalendar(weekdays=frozenset())
    assert cal.first_bar("1m", 0) is None
    assert cal.first_bar("1w", 0) == 4 * DAY


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        SessionCalendar(session_open="21:00", session_close="14:30")
    with pytest.raises(ValueError):
        SessionCalendar(daily_at="close")
    with pytest.raises(ValueError):
        DEMO_CALENDAR.count("2h", 0, DAY)
    assert isinstance(DEMO_CALENDAR, RunCalendar)
