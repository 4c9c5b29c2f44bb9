"""Request planning for the `ib` provider: IB's step-size table, the calendar, requests per segment.

IB answers `reqHistoricalData(endDateTime, durationStr, barSizeSetting)`: the bars of one bar size
for a duration ending at a moment. Which durations a bar size may use is IB's step-size table
("Historical Data Limitations", https://interactivebrokers.github.io/tws-api/historical_limitations.html):
requests must be assembled so that only a few thousand bars come back at a time.

| duration | allowed bar sizes |      | duration | allowed bar sizes |
|---|---|---|---|---|
| 60 S | 1 sec - 1 min |           | 1 D | 1 min - 1 day |
| 120 S | 1 sec - 2 mins |          | 2 D | 2 mins - 1 day |
| 1800 S | 1 sec - 30 mins |        | 1 W | 3 mins - 1 week |
| 3600 S | 5 secs - 1 hour |        | 1 M | 30 mins - 1 month |
| 14400 S | 10 secs - 3 hours |     | 1 Y | 1 day - 1 month |
| 28800 S | 30 secs - 8 hours |     |  |  |

For each bar size we take the largest duration allowing it, as whole days (so that a request
always covers an exact span of time ending at `endDateTime`): 1m -> 1 D, 5m/15m -> 1 W (7 D),
30m/1h/4h -> 1 M (30 D), 1d/1w -> 1 Y (365 D). A segment of the job is at most that span, so it
is one request.

The calendar (`IbCalendar`) is the one timeline every IB market shares: no bar starts between
Saturday 02:00 and Sunday 20:00 UTC (US extended hours end Saturday 01:00 UTC at the latest,
forex and CME futures reopen on Sunday from 21:00 UTC, Asia-Pacific on Monday morning local time,
i.e. from Sunday 21:00 UTC). Daily bars are dated Monday to Friday. Segments never straddle the
weekend in a way that would need more than one request, and a gap lying inside it costs nothing.
With `weekends=true` (markets trading on Saturday/Sunday) the calendar is open all week.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ktrdr_collect.storage.calendar import ceil_div, clip_run
from ktrdr_collect.storage.timeframes import DAY, TIMEFRAMES, WEEK, timeframe_seconds

Run = tuple[int, int, int]

# (duration string, seconds it spans at least, smallest bar size s, largest bar size s)
MONTH = 30 * DAY
YEAR = 365 * DAY
STEP_TABLE: tuple[tuple[str, int, int, int], ...] = (
    ("60 S", 60, 1, 60),
    ("120 S", 120, 1, 120),
    ("1800 S", 1800, 1, 1800),
    ("3600 S", 3600, 5, 3600),
    ("14400 S", 14400, 10, 3 * 3600),
    ("28800 S", 28800, 30, 8 * 3600),
    ("1 D", DAY, 60, DAY),
    ("2 D", 2 * DAY, 120, DAY),
    ("1 W", WEEK, 180, WEEK),
    ("1 M", MONTH, 1800, MONTH),
    ("1 Y", YEAR, DAY, MONTH),
)

BAR_SIZES: dict[str, str] = {
    "1m": "1 min", "5m": "5 mins", "15m": "15 mins", "30m": "30 mins",
    "1h": "1 hour", "4h": "4 hours", "1d": "1 day", "1w": "1 week",
}


def max_duration(timeframe: str) -> tuple[str, int]:
    """The largest duration of the step table that allows this bar size: (IB's name, seconds)."""
    step = timeframe_seconds(timeframe)
    allowed = [(name, span) for name, span, lo, hi in STEP_TABLE if lo <= step <= hi]
    return max(allowed, key=lambda item: item[1])


REQUEST_DAYS: dict[str, int] = {tf: max_duration(tf)[1] // DAY for tf in TIMEFRAMES}
"""Days one request may span, per timeframe: 1m 1, 5m/15m 7, 30m/1h/4h 30, 1d/1w 365."""


def max_bars(timeframe: str) -> int:
    """Bars of one request's span (1m: 1440, 5m: 2016, 15m: 672, 30m: 1440, 1h: 720, 4h: 180,
    1d: 365, 1w: 53): what segments are planned with."""
    return ceil_div(REQUEST_DAYS[timeframe] * DAY, timeframe_seconds(timeframe))


_SUNDAY = 3 * DAY  # 1970-01-04, the first Sunday after the epoch
_MONDAY = 4 * DAY
CLOSED_FROM = 6 * DAY + 2 * 3600  # Saturday 02:00 UTC, from the Sunday
OPEN_AT = 7 * DAY + 20 * 3600  # Sunday 20:00 UTC, from the previous Sunday (i.e. next week)


@dataclass(frozen=True)
class Request:
    """One reqHistoricalData call: bars of `days` days ending at `end` (epoch seconds)."""

    end: int
    days: int

    @property
    def duration(self) -> str:
        return f"{self.days} D"


class IbCalendar:
    """Where bars can start (see the module doc), with a split that keeps each segment within one
    request's span."""

    first: int | None = None

    def __init__(self, weekends: bool = False) -> None:
        self.weekends = weekends

    def __repr__(self) -> str:
        return f"IbCalendar(weekends={self.weekends})"

    # -- the weekly hole ---------------------------------------------------------------------
    def hole(self, timeframe: str) -> tuple[int, int] | None:
        """The closed stretch of each week as (from, to) seconds after Sunday 00:00 UTC."""
        if self.weekends or timeframe == "1w":
            return None
        if timeframe == "1d":
            return 6 * DAY, 8 * DAY  # Saturday and Sunday: no daily bars
        return CLOSED_FROM, OPEN_AT

    def open_from(self, timeframe: str, ts: int) -> int:
        """`ts`, or the end of the closed stretch it falls in."""
        hole = self.hole(timeframe)
        if hole is None:
            return ts
        week = _SUNDAY + (ts - _SUNDAY) // WEEK * WEEK
        for base in (week - WEEK, week):
            if base + hole[0] <= ts < base + hole[1]:
                return base + hole[1]
        return ts

    # -- runs of bar times -------------------------------------------------------------------
    def runs(self, timeframe: str, start: int, end: int) -> Iterator[Run]:
        step = timeframe_seconds(timeframe)
        if start >= end:
            return
        if timeframe == "1w" or (self.weekends and timeframe != "1w"):
            phase = _MONDAY if timeframe == "1w" else 0
            first = phase + ceil_div(start - phase, step) * step
            if first < end:
                yield first, ceil_div(end - first, step), step
            return
        if timeframe == "1d":
            opens, closes = 0, 5 * DAY  # Monday .. Friday, from Monday 00:00
            week = _MONDAY + (start - _MONDAY) // WEEK * WEEK
        else:
            opens, closes = OPEN_AT - WEEK, CLOSED_FROM  # from Sunday 20:00 .. Saturday 02:00
            week = _SUNDAY + (start - _SUNDAY) // WEEK * WEEK
        while week + opens < end:
            lo = week + opens
            first = ceil_div(lo, step) * step
            n = ceil_div(week + closes - first, step)
            run = clip_run(first, n, step, start, end) if n > 0 else None
            if run is not None:
                yield run
            week += WEEK

    def bar_times(self, timeframe: str, start: int, end: int) -> Iterator[int]:
        for first, n, step in self.runs(timeframe, start, end):
            yield from range(first, first + n * step, step)

    def count(self, timeframe: str, start: int, end: int) -> int:
        return sum(n for _, n, _ in self.runs(timeframe, start, end))

    def first_bar(self, timeframe: str, start: int) -> int | None:
        for first, _n, _step in self.runs(timeframe, start, start + 2 * WEEK):
            return first
        return None

    def last_bar(self, timeframe: str, start: int, end: int) -> int | None:
        """The last bar time in [start, end), or None (looks back at most two weeks per step)."""
        hi = end
        while hi > start:
            lo = max(start, hi - 2 * WEEK)
            last = None
            for first, n, step in self.runs(timeframe, lo, hi):
                last = first + (n - 1) * step
            if last is not None:
                return last
            hi = lo
        return None

    # -- planning ----------------------------------------------------------------------------
    def split(self, timeframe: str, start: int, end: int, max_bars: int) -> list[tuple[int, int]]:
        """Tile [start, end) with the fewest segments that each hold 1..max_bars bars and whose
        bars span at most one request's days (and `max_bars` bar lengths) of wall time."""
        if max_bars < 1:
            raise ValueError("max_bars must be at least 1")
        span = min(max_bars * timeframe_seconds(timeframe), REQUEST_DAYS[timeframe] * DAY)
        segments: list[tuple[int, int]] = []
        seg_start, seg_first, count = start, self.open_from(timeframe, start), 0
        for first, n, step in self.runs(timeframe, start, end):
            i = 0
            while i < n:
                ts = first + i * step
                if count and (ts + step - seg_first > span or count == max_bars):
                    segments.append((seg_start, ts))
                    seg_start, seg_first, count = ts, ts, 0
                fits = (seg_first + span - step - ts) // step + 1
                take = max(1, min(n - i, fits, max_bars - count))
                count += take
                i += take
        if not count:
            return []
        segments.append((seg_start, end))
        return segments

    def requests(self, timeframe: str, start: int, end: int) -> list[Request]:
        """The reqHistoricalData calls covering [start, end): usually one, newest first."""
        step = timeframe_seconds(timeframe)
        limit = REQUEST_DAYS[timeframe]
        lo = self.open_from(timeframe, start)
        plan: list[Request] = []
        hi = end
        while hi > lo:
            last = self.last_bar(timeframe, lo, hi)
            if last is None:
                break
            req_end = min(hi, last + step)
            days = max(1, min(limit, ceil_div(req_end - lo, DAY)))
            plan.append(Request(req_end, days))
            hi = req_end - days * DAY
        return plan
