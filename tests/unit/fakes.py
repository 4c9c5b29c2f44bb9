"""Test doubles: a manual clock and a scriptable provider on the demo calendar."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ktrdr_collect.providers.base import Bar, Interrupt, Provider
from ktrdr_collect.providers.demo import DemoSeries
from ktrdr_collect.storage.calendar import DEMO_CALENDAR
from ktrdr_collect.storage.timeframes import TIMEFRAMES


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class ScriptedProvider(Provider):
    """Demo bars; `on_fetch(symbol, n)` runs before the n-th fetch (1-based) and may raise."""

    name = "scripted"
    timeframes = TIMEFRAMES
    calendar = DEMO_CALENDAR

    def __init__(self, on_fetch: Callable[[str, int], Any] | None = None, max_bars: int = 1000,
                 bars: Callable[[str, list[Bar]], list[Bar]] | None = None) -> None:
        super().__init__({})
        self.max_bars = max_bars
        self.on_fetch = on_fetch
        self.transform = bars
        self.calls: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def earliest(self, timeframe: str) -> int:
        return 946857600

    def fetch(self, symbol: str, timeframe: str, start: int, end: int, interrupt: Interrupt) -> list[Bar]:
        with self._lock:
            self.calls.append((symbol, start, end))
            n = sum(1 for c in self.calls if c[0] == symbol)
        if self.on_fetch:
            self.on_fetch(symbol, n)
        series = DemoSeries(symbol, timeframe)
        bars = [series.bar(ts) for ts in self.calendar.bar_times(timeframe, start, end)][: self.max_bars]
        return self.transform(symbol, bars) if self.transform else bars
