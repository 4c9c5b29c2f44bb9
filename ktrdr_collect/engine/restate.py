"""Corporate actions a job learns of, and restating a series when one changes its stored prices.

A provider whose prices are adjusted (Yahoo: for every split up to today) serves history on a new
price scale after a split: the bars stored before it are on the old one. When the answers of a
job carry an action of a type the provider adjusts for (`Provider.adjusted_for`) that is not in
the series' actions file yet, the stored bars dated before it that this job did not fetch itself
are fetched again and replaced in one swap of the data file (storage/refresh.py), the series as
it was kept under ``.ktrdr/`` first (storage/actions.py). Only then are the actions stored, and
only then are the job's new bars written (the pipeline calls this right before each write): a
crash anywhere leaves a file on one price scale, and the next run, fetching the same missing
range, sees the action again and finishes the work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from fractions import Fraction

from ktrdr_collect import files
from ktrdr_collect.providers.base import Action, Bar, Provider
from ktrdr_collect.storage.actions import keep_copy, merged, read_actions, series_actions_path, store_actions
from ktrdr_collect.storage.gaps import merge_intervals, subtract
from ktrdr_collect.storage.refresh import replace_ranges
from ktrdr_collect.storage.store import Store
from ktrdr_collect.storage.timeframes import format_ts

log = logging.getLogger("ktrdr_collect.engine")
Range = tuple[int, int]


def describe(action: Action) -> str:
    """``a 10:1 split on 2024-06-10``, ``a 1:10 split ...``, ``a 0.04 dividend on ...``."""
    ts, kind, value = action
    day = format_ts(ts)[:10]
    if kind == "split":
        ratio = Fraction(value).limit_denominator(1000)
        return f"a {ratio.numerator}:{ratio.denominator} split on {day}"
    return f"a {value:g} {kind} on {day}"


def stale_ranges(coverage: Sequence[Range], fetched: Sequence[Range], before: int) -> list[Range]:
    """The stored ranges dated before `before` that this job did not fetch (on an older scale)."""
    kept = [piece for lo, hi in coverage if lo < before for piece in subtract((lo, min(hi, before)), fetched)]
    return merge_intervals(kept)


class Restater:
    """One series' actions as a job fetches it (SymbolPipeline holds one)."""

    def __init__(self, provider: Provider, store: Store, timeframe: str, symbol: str,
                 fetch: Callable[[Range], list[Bar]], counted: Callable[[int], None],
                 now: Callable[[], float]) -> None:
        self.provider, self.store, self.timeframe, self.symbol = provider, store, timeframe, symbol
        self.fetch = fetch
        self.counted = counted
        """Told how many bars a restatement changed (the job counts them, like a refresh's)."""
        self.now = now
        self.fetched: list[Range] = []
        """The ranges this job fetched: on the provider's price scale of today."""
        self.pending: list[Action] = []
        """Actions taken from the provider and not stored yet."""

    def fetched_range(self, segment: Range) -> None:
        self.fetched = merge_intervals([*self.fetched, segment])

    def before_write(self) -> int:
        """Store the actions the provider saw for this series, restating the series first when one
        of them changes its stored bars; returns the bars restatement changed (0: none).

        The actions stay pending until they are stored: when restating fails (a request gives up,
        the job is cancelled), this raises, the write it comes before does not happen, and the
        next write (a batch flushed on the way out) tries again rather than append the new scale."""
        p, key = self.provider, (self.provider.name, self.timeframe, self.symbol)
        self.pending = merged(self.pending, p.take_actions(self.symbol, self.timeframe))
        if not self.pending:
            return 0
        known = set(read_actions(series_actions_path(self.store, *key)))
        triggers = [a for a in self.pending if a[1] in p.adjusted_for and a not in known]
        changed = 0
        if triggers:
            changed = self._restate(triggers)
            self.pending = merged(self.pending, p.take_actions(self.symbol, self.timeframe))  # seen again
        store_actions(self.store, *key, self.pending)
        self.pending = []
        return changed

    def _restate(self, triggers: list[Action]) -> int:
        p, store, key = self.provider, self.store, (self.provider.name, self.timeframe, self.symbol)
        latest = max(ts for ts, _, _ in triggers)
        stale = stale_ranges(store.coverage(*key), self.fetched, latest)
        if not stale or store.count(*key, stale) == 0:
            return 0
        calendar = p.calendar_for(self.symbol)
        bars: list[Bar] = []
        for lo, hi in stale:
            for segment in calendar.split(self.timeframe, lo, hi, p.max_bars_for(self.timeframe)):
                bars.extend(self.fetch(segment))  # the pipeline's fetch: paced, retried, counted; marks it fetched
        with store.lock(*key):
            kept = keep_copy(store, *key, store.read(*key), int(self.now()))
            changed = replace_ranges(store, *key, bars, stale)
            if not changed:
                files.remove_quietly(kept)
        what = " and ".join(describe(a) for a in triggers)
        if changed:
            self.counted(changed)
            log.info("%s: restated %s bar%s after %s", self.symbol, f"{changed:,}", "" if changed == 1 else "s", what)
        else:
            log.debug("%s: stored bars were already on the price scale after %s", self.symbol, what)
        return changed
