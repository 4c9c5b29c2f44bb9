"""What a series needs before any request: its missing ranges and the requests that fill them —
the plan the pipeline runs and `collect plan` prints — and how long requests take under pacing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ktrdr_collect.providers.base import Provider
from ktrdr_collect.storage.gaps import subtract
from ktrdr_collect.storage.store import Store
from ktrdr_collect.storage.timeframes import timeframe_seconds

Range = tuple[int, int]


def published_edge(provider: Provider, timeframe: str, now: float) -> int:
    """Bars opening before this instant have ended and had the provider's publication delay to
    appear: the newest range a job may ask for and record as fetched (the contract's rule)."""
    return int(now - provider.publish_delay_s) - timeframe_seconds(timeframe)


@dataclass(frozen=True)
class SeriesPlan:
    missing: list[Range]
    """The window's ranges not fetched yet (cut at the publication edge)."""
    segments: list[Range]
    """One request each, at most the provider's `max_bars_for(timeframe)` bars."""
    empty: list[Range]
    """Missing ranges where the symbol's calendar has no bar: recorded without a request."""
    edge: int | None
    """The publication edge, when it cut the window's end."""


def plan_series(provider: Provider, store: Store, timeframe: str, symbol: str, start: int, end: int,
                now: float, refresh: bool = False) -> SeriesPlan:
    """The requests one series needs for [start, end): the stored coverage's gaps (the whole
    window with `refresh`), split into the fewest segments the provider allows."""
    edge = published_edge(provider, timeframe, now)
    stop = min(end, edge)
    coverage = [] if refresh else store.coverage(provider.name, timeframe, symbol)
    missing = subtract((start, stop), coverage) if stop > start else []
    calendar = provider.calendar_for(symbol)
    segments: list[Range] = []
    empty: list[Range] = []
    for gap in missing:
        parts = calendar.split(timeframe, gap[0], gap[1], provider.max_bars_for(timeframe))
        if parts:
            segments.extend(parts)
        else:
            empty.append(gap)
    return SeriesPlan(missing, segments, empty, stop if end > edge else None)


def paced_duration(requests: int, rate: float | None, windows: Sequence[tuple[int, float]] | None) -> float:
    """Seconds until the last of `requests` may be sent under a pacing of `rate` requests a second
    and sliding `windows` (at most N requests in any S seconds), starting with none spent: 0 for
    one request or no pacing. Latency comes on top."""
    if requests <= 1:
        return 0.0
    waits = [(requests - 1) / rate] if rate else []
    for count, span in windows or ():
        waits.append(math.floor((requests - 1) / count) * span)
    return max(waits, default=0.0)
