"""The offline, deterministic `demo` provider (CONTRACT.md "The demo provider").

A bar's values depend only on (symbol, timeframe, timestamp): a smooth price path from a few
sine waves scaled per symbol, with per-bar noise from an integer hash. Synthetic data.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ktrdr_collect import paths
from ktrdr_collect.providers.base import (
    Bar,
    Interrupt,
    OptionSpec,
    Provider,
    RateLimitedError,
    TransientError,
    UnknownSymbolError,
    mark_sent,
)
from ktrdr_collect.providers.shared_file import locked_json
from ktrdr_collect.storage.calendar import DEMO_CALENDAR
from ktrdr_collect.storage.timeframes import TIMEFRAMES, timeframe_seconds

if TYPE_CHECKING:
    import numpy as np

    from ktrdr_collect.storage.columns import Columns

FIRST_BAR = 946857600  # 2000-01-03T00:00:00Z
_MASK = (1 << 64) - 1
_TAU = 2 * math.pi
_YEAR = 365.25 * 86400


_W1, _W2, _W3 = _TAU / (3.1 * _YEAR), _TAU / (97 * 86400), _TAU / (5.3 * 86400)
_HAIR = 1e-4
"""How near (in cents) a price may come to a cent's rounding edge before `columns` makes its bar
again one by one: far wider than any difference numpy's sin and exp can make (below 1e-12 of a
price; `_LEVEL_TOLERANCE`), far narrower than a cent."""
_LEVEL_TOLERANCE = 1e-12


def _cents(x: float) -> float:
    """Round a positive price to cents (the closest double to k/100, so it prints as k/100)."""
    return int(x * 100 + 0.5) / 100


def _mix(x: int) -> int:
    """splitmix64: a fast, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class DemoSeries:
    """The deterministic price path of one (symbol, timeframe)."""

    def __init__(self, symbol: str, timeframe: str) -> None:
        crc = zlib.crc32(symbol.encode())
        self.seed = (crc << 32) ^ zlib.crc32(timeframe.encode())
        self.step = timeframe_seconds(timeframe)
        self.base = 20.0 + (crc % 4800) / 10.0
        self.phase = (crc % 1000) / 1000 * _TAU
        self.volume_scale = 1000.0 * math.sqrt(self.step)

    def level(self, ts: float, sin: Callable[[float], float] = math.sin) -> float:
        p = self.phase
        wave = 0.35 * sin(ts * _W1 + p) + 0.12 * sin(ts * _W2 + 2 * p) + 0.04 * sin(ts * _W3 + 3 * p)
        return self.base * math.exp(wave)

    def bars(self, times: Iterable[int]) -> list[Bar]:
        """Bars at `times`: the same values as `bar`, with each price level computed once."""
        levels: dict[int, float] = {}
        level, step, out = self.level, self.step, []
        for ts in times:
            now = levels.pop(ts, None)
            if now is None:
                now = level(ts)
            nxt = levels[ts + step] = level(ts + step)
            out.append(self._bar(ts, now, nxt))
        return out

    def columns(self, times: Iterable[int]) -> Columns:
        """`bars(times)` as columns, made with array operations: the same values to the last bit.

        The hash and the arithmetic are the same IEEE operations in the same order as `bar`'s.
        The price level uses numpy's sin and exp, which may differ from the math module's in the
        last bit or two; the prices are then rounded to cents, which a difference that small can
        change only for a price within a hair of half a cent. Such bars (about 1 in 2,500) are
        made again one by one with `bar`, so every value is `bar`'s; and if numpy's level strays
        from `level` by more than a hair on a sample (a libm we never met), every level is taken
        from `level`. tests/unit/test_demo_provider.py compares the two."""
        import numpy as np

        from ktrdr_collect.storage.columns import Columns

        ts = times if isinstance(times, np.ndarray) else np.fromiter(times, np.int64)
        if not len(ts):
            return Columns.empty()
        step = self.step
        ahead = ts + step
        if len(ts) > 1 and bool((ts[1:] > ts[:-1]).all()) and bool((ahead[:-1] < ts[1:]).all()):
            grid = np.column_stack([ts, ahead]).ravel()  # ascending and apart: already in order
        else:
            grid = np.union1d(ts, ahead)
        levels = self._levels(grid.astype(np.float64))  # times < 2**53: exact as floats
        now, nxt = levels[np.searchsorted(grid, ts)], levels[np.searchsorted(grid, ahead)]
        x = np.uint64(self.seed) ^ ts.astype(np.uint64)
        with np.errstate(over="ignore"):
            x = x + np.uint64(0x9E3779B97F4A7C15)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h = x ^ (x >> np.uint64(31))
        mask = np.uint64(0xFFFF)
        u1 = (h & mask).astype(np.float64) / 65535 - 0.5
        u2 = ((h >> np.uint64(16)) & mask).astype(np.float64) / 65535 - 0.5
        u3 = ((h >> np.uint64(32)) & mask).astype(np.float64) / 65535
        u4 = ((h >> np.uint64(48)) & mask).astype(np.float64) / 65535
        open_ = now * (1 + 0.004 * u1)
        close = nxt * (1 + 0.004 * u2)
        high = np.maximum(open_, close) * (1 + 0.006 * u3)
        low = np.minimum(open_, close) * (1 - 0.006 * u4)
        cents = np.column_stack([open_, high, low, close]) * 100 + 0.5
        whole = np.trunc(cents)
        values = np.empty((len(ts), 5))
        values[:, :4] = whole / 100
        values[:, 4] = np.trunc(self.volume_scale * (0.5 + u3 + u4))
        near = ((cents - whole) < _HAIR) | ((cents - whole) > 1 - _HAIR)  # within a hair of a cent's edge
        for i in np.flatnonzero(near.any(axis=1)).tolist():
            values[i] = self.bar(int(ts[i]))[1:]
        return Columns(ts, values)

    def _levels(self, grid: np.ndarray) -> np.ndarray:
        """`level` at each time of `grid` (float64), by numpy (see `columns`)."""
        import numpy as np

        p = self.phase
        wave = 0.35 * np.sin(grid * _W1 + p) + 0.12 * np.sin(grid * _W2 + 2 * p) + 0.04 * np.sin(grid * _W3 + 3 * p)
        levels = self.base * np.exp(wave)
        for k in {0, len(grid) // 2, len(grid) - 1}:  # a sample against the math module
            exact = self.level(float(grid[k]))
            if abs(levels[k] - exact) > exact * _LEVEL_TOLERANCE:
                return np.array([self.level(t) for t in grid.tolist()])
        return levels

    def bar(self, ts: int) -> Bar:
        return self._bar(ts, self.level(ts), self.level(ts + self.step))

    def _bar(self, ts: int, level_now: float, level_next: float) -> Bar:
        h = _mix(self.seed ^ ts)
        u1 = (h & 0xFFFF) / 65535 - 0.5
        u2 = ((h >> 16) & 0xFFFF) / 65535 - 0.5
        u3 = ((h >> 32) & 0xFFFF) / 65535
        u4 = ((h >> 48) & 0xFFFF) / 65535
        open_ = level_now * (1 + 0.004 * u1)
        close = level_next * (1 + 0.004 * u2)
        high = max(open_, close) * (1 + 0.006 * u3)
        low = min(open_, close) * (1 - 0.006 * u4)
        volume = float(int(self.volume_scale * (0.5 + u3 + u4)))
        return (ts, _cents(open_), _cents(high), _cents(low), _cents(close), volume)


@lru_cache(maxsize=256)
def bar_times(calendar: Any, timeframe: str, start: int, end: int, limit: int) -> Any:
    """The first `limit` bar times in [start, end) as a read-only int64 array: the same for every
    symbol, so a batch asking each symbol for the same window enumerates the calendar once."""
    import numpy as np

    times = np.fromiter(itertools.islice(calendar.bar_times(timeframe, start, end), limit), np.int64)
    times.setflags(write=False)
    return times


def _symbol_set(text: str) -> frozenset[str]:
    return frozenset(s.strip().upper() for s in text.split(",") if s.strip())


class ServerRateLimit:
    """The demo 'server' side of rate_limit: a sliding 1-second window shared by every process."""

    def __init__(self, limit: int, folder: Path) -> None:
        self.limit = limit
        self.path = folder / f"demo-server-{limit}.json"

    def admit(self) -> float | None:
        """None if the request is admitted, else seconds until it would be."""
        with locked_json(self.path) as shared:
            now = time.time()
            try:
                stamps = [float(t) for t in shared.load() or [] if now - 1.0 < float(t) <= now + 1.0]
            except (ValueError, TypeError):
                stamps = []
            if len(stamps) >= self.limit:
                return max(0.001, min(stamps) + 1.0 - now)
            stamps.append(now)
            shared.save(stamps)
            return None


MAX_DELAY_MS = 600_000.0
"""Longest latency or jitter an option may ask for (10 minutes)."""


class DemoProvider(Provider):
    name = "demo"
    description = "Offline deterministic SYNTHETIC data, for examples, tests and benchmarks"
    timeframes = TIMEFRAMES
    synthetic = True
    option_specs = (
        OptionSpec("latency_ms", float, 50.0, "time each request takes", low=0, high=MAX_DELAY_MS),
        OptionSpec("jitter_ms", float, 0.0, "extra random latency, 0..jitter_ms", low=0, high=MAX_DELAY_MS),
        OptionSpec("max_bars", int, 1000, "most bars one request returns", low=1, high=1_000_000),
        OptionSpec("fail_symbols", str, "", "comma list: these symbols fail validation as unknown"),
        OptionSpec("flaky_symbols", str, "", "comma list: each request fails once, then succeeds"),
        OptionSpec("rate_limit", int, 0, "if > 0, requests beyond this many per second are refused",
                   low=0, high=1_000_000),
    )
    calendar = DEMO_CALENDAR

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        o = self.options
        if o["max_bars"] < 1:
            raise ValueError("max_bars must be >= 1")
        self.max_bars = o["max_bars"]
        self.rate_limit = float(o["rate_limit"]) if o["rate_limit"] > 0 else None
        self.expected_latency_s = (o["latency_ms"] + o["jitter_ms"] / 2) / 1000
        self.fail_symbols = _symbol_set(o["fail_symbols"])
        self.flaky_symbols = _symbol_set(o["flaky_symbols"])
        self._failed_once: set[tuple[str, str, int, int]] = set()
        self._lock = threading.Lock()
        self._server = ServerRateLimit(o["rate_limit"], paths.shared_dir()) if o["rate_limit"] > 0 else None

    def earliest(self, timeframe: str) -> int:
        return FIRST_BAR

    def validate(self, symbol: str) -> None:
        if symbol.upper() in self.fail_symbols:
            raise UnknownSymbolError(f"unknown symbol {symbol} (demo fail_symbols)")

    def fetch(self, symbol: str, timeframe: str, start: int, end: int, interrupt: Interrupt) -> Sequence[Bar]:
        if self._server is not None:
            mark_sent(interrupt)
            wait = self._server.admit()
            if wait is not None:
                raise RateLimitedError(f"demo rate limit {self._server.limit}/s exceeded", retry_after=wait)
        delay = self.options["latency_ms"] + random.uniform(0, self.options["jitter_ms"])
        if delay > 0 and interrupt.wait(delay / 1000):
            return []
        if symbol.upper() in self.flaky_symbols:
            key = (symbol.upper(), timeframe, start, end)
            with self._lock:
                first_time = key not in self._failed_once
                self._failed_once.add(key)
            if first_time:
                raise TransientError("demo flaky symbol: connection reset (will succeed on retry)")
        series = DemoSeries(symbol.upper(), timeframe)
        return series.columns(bar_times(self.calendar, timeframe, max(start, FIRST_BAR), end, self.max_bars))
