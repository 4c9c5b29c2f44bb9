"""Which timestamps a provider has bars at.

Both calendars describe their bars as "runs": arithmetic sequences ``(first_ts, n, step)``
(``first_ts + i * step`` for ``0 <= i < n``), ascending and non-overlapping. A run is at most a
trading session long, so counting and splitting cost O(days + segments), never O(bars).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, time
from typing import Any, Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from ktrdr_collect.storage.timeframes import DAY, WEEK, is_intraday, timeframe_seconds

Run = tuple[int, int, int]

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MONDAY_PHASE = 4 * DAY  # 1970-01-05, the first Monday after the epoch
_SPLIT_MEMO = 256
_FIRST_BAR_TRIES = 13  # search windows double from 1 week: ~150 years in total


@runtime_checkable
class Calendar(Protocol):
    """The timestamps a provider has bars at, for each timeframe."""

    def bar_times(self, timeframe: str, start: int, end: int) -> Iterator[int]: ...

    def count(self, timeframe: str, start: int, end: int) -> int: ...

    def split(self, timeframe: str, start: int, end: int, max_bars: int) -> list[tuple[int, int]]: ...

    def first_bar(self, timeframe: str, start: int) -> int | None: ...


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def arithmetic_run(phase: int, step: int, start: int, end: int) -> Run | None:
    """The points ``phase + k * step`` inside ``[start, end)`` as one run, or None."""
    first = phase + ceil_div(start - phase, step) * step
    if first >= end:
        return None
    return first, ceil_div(end - first, step), step


def clip_run(first: int, n: int, step: int, start: int, end: int) -> Run | None:
    """The part of run ``(first, n, step)`` inside ``[start, end)``, or None."""
    lo = max(0, ceil_div(start - first, step))
    hi = min(n, ceil_div(end - first, step))
    if hi <= lo:
        return None
    return first + lo * step, hi - lo, step


class RunCalendar:
    """Shared logic for calendars that describe their bars as runs; subclasses define ``runs``."""

    first: int | None = None

    def runs(self, timeframe: str, start: int, end: int) -> Iterator[Run]:
        raise NotImplementedError

    def _clipped_runs(self, timeframe: str, start: int, end: int) -> Iterator[Run]:
        timeframe_seconds(timeframe)  # validates the name
        if self.first is not None:
            start = max(start, self.first)
        if start >= end:
            return iter(())
        return self.runs(timeframe, start, end)

    def bar_times(self, timeframe: str, start: int, end: int) -> Iterator[int]:
        for first, n, step in self._clipped_runs(timeframe, start, end):
            yield from range(first, first + n * step, step)

    def count(self, timeframe: str, start: int, end: int) -> int:
        return sum(n for _, n, _ in self._clipped_runs(timeframe, start, end))

    def first_bar(self, timeframe: str, start: int) -> int | None:
        if self.first is not None:
            start = max(start, self.first)
        span = WEEK
        for _ in range(_FIRST_BAR_TRIES):
            for first, _n, _step in self._clipped_runs(timeframe, start, start + span):
                return first
            start += span
            span *= 2
        return None

    memo_split = False
    """A calendar whose sessions never change once made (all but ``first``, which is in the key)
    keeps its tilings: every symbol of a batch asks for the same window's."""

    def split(self, timeframe: str, start: int, end: int, max_bars: int) -> list[tuple[int, int]]:
        """Tile ``[start, end)`` with the fewest segments holding 1..max_bars bars each."""
        if not self.memo_split:
            return self._split(timeframe, start, end, max_bars)
        memo: dict[tuple[Any, ...], list[tuple[int, int]]] = self.__dict__.setdefault("_split_memo", {})
        key = (timeframe, start, end, max_bars, self.first)
        segments = memo.get(key)
        if segments is None:
            segments = self._split(timeframe, start, end, max_bars)
            if len(memo) >= _SPLIT_MEMO:
                memo.clear()
            memo[key] = segments
        return list(segments)

    def _split(self, timeframe: str, start: int, end: int, max_bars: int) -> list[tuple[int, int]]:
        if max_bars < 1:
            raise ValueError("max_bars must be at least 1")
        segments: list[tuple[int, int]] = []
        seg_start = start
        filled = 0
        for first, n, step in self._clipped_runs(timeframe, start, end):
            i = 0
            while i < n:
                if filled == max_bars:
                    cut = first + i * step
                    segments.append((seg_start, cut))
                    seg_start, filled = cut, 0
                take = min(max_bars - filled, n - i)
                filled += take
                i += take
        if filled == 0:
            return []
        segments.append((seg_start, end))
        return segments


class AlwaysOpenCalendar(RunCalendar):
    """24/7 markets: intraday bars at every multiple of the timeframe since the epoch,
    1d at 00:00 UTC every day, 1w on Mondays at 00:00 UTC."""

    def __init__(self, first: int | None = None) -> None:
        self.first = first

    def runs(self, timeframe: str, start: int, end: int) -> Iterator[Run]:
        step = timeframe_seconds(timeframe)
        phase = _MONDAY_PHASE if step == WEEK else 0
        run = arithmetic_run(phase, step, start, end)
        if run is not None:
            yield run

    def __repr__(self) -> str:
        return f"AlwaysOpenCalendar(first={self.first!r})"


def parse_clock(text: str) -> time:
    """``"14:30"`` or ``"14:30:00"`` -> ``datetime.time``."""
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid time of day {text!r}; expected HH:MM") from None


def day_number(ts: int) -> int:
    """Days since 1970-01-01 of the UTC date of ``ts``."""
    return ts // DAY


def weekday_of(day: int) -> int:
    """Monday = 0 .. Sunday = 6 for a day number."""
    return (day + 3) % 7


class SessionCalendar(RunCalendar):
    """Exchange sessions: given weekdays in a timezone, minus holidays, open..close local time."""

    memo_split = True  # fixed at construction (``first`` is in the memo's key)

    def __init__(
        self,
        tz: str = "UTC",
        session_open: str = "14:30",
        session_close: str = "21:00",
        weekdays: frozenset[int] = frozenset(range(5)),
        holidays: frozenset[date] = frozenset(),
        daily_at: str = "midnight",
        first: int | None = None,
        sessions: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        if daily_at not in ("midnight", "open"):
            raise ValueError(f"daily_at must be 'midnight' or 'open', not {daily_at!r}")
        if not all(0 <= d <= 6 for d in weekdays):
            raise ValueError("weekdays must be integers 0 (Monday) .. 6 (Sunday)")
        self.tz = tz
        self.zone = ZoneInfo(tz)
        self.open_time = parse_clock(session_open)
        self.close_time = parse_clock(session_close)
        if self.close_time <= self.open_time:
            raise ValueError("session_close must be after session_open (overnight sessions unsupported)")
        self.weekdays = frozenset(weekdays)
        self.holidays = frozenset(holidays)
        self.daily_at = daily_at
        self.first = first
        self._holiday_days = frozenset(h.toordinal() - _EPOCH_ORDINAL for h in holidays)
        self._sessions: dict[int, tuple[int, int]] = {}
        # The exchange's own sessions (e.g. from exchange_calendars): inside their span a day trades
        # only if listed, with the listed open and close (early closes); outside it, the weekday rule.
        self._known = dict(sessions or {})
        self._known_span = (min(self._known), max(self._known)) if self._known else (1, 0)

    def __repr__(self) -> str:
        return (
            f"SessionCalendar(tz={self.tz!r}, session_open={self.open_time.isoformat('minutes')!r}, "
            f"session_close={self.close_time.isoformat('minutes')!r}, weekdays={sorted(self.weekdays)}, "
            f"holidays={len(self.holidays)}, daily_at={self.daily_at!r}, first={self.first!r}, "
            f"sessions={len(self._known)})"
        )

    def _in_known_span(self, day: int) -> bool:
        return self._known_span[0] <= day <= self._known_span[1]

    def is_trading_day(self, day: int) -> bool:
        """Whether the local date with day number ``day`` has a session."""
        if self._in_known_span(day):
            return day in self._known
        return weekday_of(day) in self.weekdays and day not in self._holiday_days

    def session(self, day: int) -> tuple[int, int]:
        """UTC ``(open, close)`` instants of the session on local date ``day`` (a day number)."""
        known = self._known.get(day)
        if known is not None:
            return known
        cached = self._sessions.get(day)
        if cached is None:
            local = date.fromordinal(day + _EPOCH_ORDINAL)
            opens = datetime.combine(local, self.open_time, tzinfo=self.zone)
            closes = datetime.combine(local, self.close_time, tzinfo=self.zone)
            cached = (int(opens.timestamp()), int(closes.timestamp()))
            self._sessions[day] = cached
        return cached

    def runs(self, timeframe: str, start: int, end: int) -> Iterator[Run]:
        if timeframe == "1w":
            return self._weekly_runs(start, end)
        if timeframe == "1d":
            return self._daily_runs(start, end)
        return self._intraday_runs(timeframe_seconds(timeframe), start, end)

    def _candidate_days(self, start: int, end: int) -> range:
        # A local date's session lies within one day of the same UTC date.
        return range(day_number(start) - 1, day_number(end - 1) + 2)

    def _intraday_runs(self, step: int, start: int, end: int) -> Iterator[Run]:
        for day in self._candidate_days(start, end):
            if not self.is_trading_day(day):
                continue
            opens, closes = self.session(day)
            run = clip_run(opens, ceil_div(closes - opens, step), step, start, end)
            if run is not None:
                yield run

    def _daily_runs(self, start: int, end: int) -> Iterator[Run]:
        for day in self._candidate_days(start, end):
            if self.is_trading_day(day):
                ts = self.bar_instant(day)
                if start <= ts < end:
                    yield ts, 1, DAY

    def _weekly_runs(self, start: int, end: int) -> Iterator[Run]:
        if self.daily_at == "midnight":
            run = arithmetic_run(_MONDAY_PHASE, WEEK, start, end)
            if run is not None:
                yield run
            return
        first_monday = day_number(start) - 1
        first_monday += (-weekday_of(first_monday)) % 7
        for day in range(first_monday, day_number(end - 1) + 2, 7):
            ts = self.session(day)[0]
            if start <= ts < end:
                yield ts, 1, WEEK

    def bar_instant(self, day: int) -> int:
        """The 1d bar timestamp for local date ``day``."""
        if self.daily_at == "midnight":
            return day * DAY
        return self.session(day)[0]


DEMO_CALENDAR = SessionCalendar(first=946_857_600)  # 2000-01-03T00:00:00Z, a Monday

__all__ = [
    "AlwaysOpenCalendar",
    "Calendar",
    "DEMO_CALENDAR",
    "RunCalendar",
    "SessionCalendar",
    "is_intraday",
]
