"""Converting a daily or weekly series stored in an older timestamp convention.

Up to 0.1 some providers stamped daily bars at an exchange's open instead of 00:00:00Z of the
session date. The first job that touches such a file converts it: every bar is moved to
00:00:00Z of the day the provider says it belongs to, and the fetched ranges are carried over
only between converted bars (the edges are simply fetched again). When a bar's day cannot be told,
or two bars land on one day, the file is set aside as `<name>.legacy` and the series is fetched
again: nothing is lost, nothing is guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from ktrdr_collect.storage.gaps import Interval
from ktrdr_collect.storage.timeframes import DAY, timeframe_seconds

Bar = tuple[int, float, float, float, float, float]
LEGACY_TAG = "legacy"


class RestampableStore(Protocol):
    def read(self, provider: str, timeframe: str, symbol: str) -> list[Bar]: ...

    def coverage(self, provider: str, timeframe: str, symbol: str) -> list[Interval]: ...

    def replace(self, provider: str, timeframe: str, symbol: str, bars: Sequence[Bar],
                ranges: Sequence[Interval]) -> None: ...

    def set_aside(self, provider: str, timeframe: str, symbol: str, tag: str) -> Path | None: ...

    def lock(self, provider: str, timeframe: str, symbol: str): ...  # type: ignore[no-untyped-def]


def restamp_bars(bars: Sequence[Bar], day_of: Callable[[int], int | None]) -> list[Bar] | None:
    """Bars moved to 00:00Z of their day (already-converted ones stay), or None if any day is
    unknown or the result is not strictly ascending."""
    out: list[Bar] = []
    for bar in bars:
        if bar[0] % DAY == 0:
            out.append(bar)
            continue
        day = day_of(bar[0])
        if day is None:
            return None
        out.append((day * DAY, *bar[1:]))  # type: ignore[arg-type]
    if any(a[0] >= b[0] for a, b in zip(out, out[1:], strict=False)):
        return None
    return out


def carried_ranges(old: Sequence[Bar], new: Sequence[Bar], ranges: Sequence[Interval], step: int) -> list[Interval]:
    """Each old fetched range becomes the span from its first to its last bar, converted."""
    carried: list[Interval] = []
    for lo, hi in ranges:
        inside = [i for i, bar in enumerate(old) if lo <= bar[0] < hi]
        if inside:
            carried.append((new[inside[0]][0], new[inside[-1]][0] + step))
    return carried


def restamp_series(store: RestampableStore, provider: str, timeframe: str, symbol: str,
                   day_of: Callable[[int], int | None]) -> str:
    """Convert one series in place (under its lock); returns a sentence saying what happened."""
    with store.lock(provider, timeframe, symbol):
        old = store.read(provider, timeframe, symbol)
        if not old or all(bar[0] % DAY == 0 for bar in old):
            return "already stamped at 00:00Z of its session dates"
        new = restamp_bars(old, day_of)
        if new is None:
            where = store.set_aside(provider, timeframe, symbol, LEGACY_TAG)
            return (f"stored {timeframe} bars were in an older timestamp convention that cannot be converted "
                    f"safely; kept as {where} and fetched again")
        ranges = carried_ranges(old, new, store.coverage(provider, timeframe, symbol), timeframe_seconds(timeframe))
        store.replace(provider, timeframe, symbol, new, ranges)
        return f"converted {len(old)} stored {timeframe} bars to 00:00Z of their session dates"
