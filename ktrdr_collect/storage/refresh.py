"""Replacing what is stored in some ranges with what the provider answers now (`start --refresh`,
restatement): the bars outside the ranges stay as they are, the data file is swapped in one
piece (the store's `replace`), and the ranges are recorded as fetched."""

from __future__ import annotations

from collections.abc import Sequence

from ktrdr_collect.storage.gaps import Interval, merge_intervals
from ktrdr_collect.storage.series import Bar
from ktrdr_collect.storage.store import Store


def replace_ranges(store: Store, provider: str, timeframe: str, symbol: str, bars: Sequence[Bar],
                   ranges: Sequence[Interval]) -> int:
    """Make the stored bars inside `ranges` exactly `bars` (each inside one of them); return how
    many bars that added, changed or removed. Nothing changed: only the record grows (no rewrite)."""
    spans = merge_intervals(list(ranges))
    if not spans:
        return 0

    def inside(ts: int) -> bool:
        return any(lo <= ts < hi for lo, hi in spans)

    new = {bar[0]: tuple(bar) for bar in bars}
    if any(not inside(ts) for ts in new):
        raise ValueError("a bar outside the ranges it replaces")
    with store.lock(provider, timeframe, symbol):
        stored = store.read(provider, timeframe, symbol, spans[0][0], spans[-1][1])
        old = {bar[0]: tuple(bar) for bar in stored if inside(bar[0])}
        changed = sum(1 for ts, bar in new.items() if old.get(ts) != bar) + sum(1 for ts in old if ts not in new)
        if not changed:
            for span in spans:
                store.write(provider, timeframe, symbol, [], span)
            return 0
        everything = store.read(provider, timeframe, symbol)
        kept = [bar for bar in everything if not inside(bar[0])]
        merged = sorted([*kept, *(new[ts] for ts in new)], key=lambda bar: bar[0])
        coverage = merge_intervals([*store.coverage(provider, timeframe, symbol), *spans])
        store.replace(provider, timeframe, symbol, merged, coverage)
        return changed
