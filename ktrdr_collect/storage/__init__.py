"""Storage layer: timeframes, market calendars, interval arithmetic, and the CSV data store."""

from ktrdr_collect.storage.calendar import DEMO_CALENDAR, AlwaysOpenCalendar, Calendar, SessionCalendar
from ktrdr_collect.storage.csv_store import Bar, CsvStore
from ktrdr_collect.storage.gaps import merge_intervals, subtract
from ktrdr_collect.storage.paths import file_stem
from ktrdr_collect.storage.timeframes import TIMEFRAMES, format_ts, parse_ts, timeframe_seconds

__all__ = [
    "DEMO_CALENDAR",
    "TIMEFRAMES",
    "AlwaysOpenCalendar",
    "Bar",
    "Calendar",
    "CsvStore",
    "SessionCalendar",
    "file_stem",
    "format_ts",
    "merge_intervals",
    "parse_ts",
    "subtract",
    "timeframe_seconds",
]
