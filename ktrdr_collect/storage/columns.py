"""Bars as columns: the hot path's one type for a run of bars, from a provider's decode to the file.

``Columns`` holds a series' timestamps (int64 epoch seconds) and its open/high/low/close/volume
(float64, one row per bar) as numpy arrays. It is also a read-only ``Sequence`` of ``Bar`` tuples,
so code that walks bars one by one (merges, Parquet, tests) keeps working unchanged; the hot path
(pipeline checks, the CSV writer) works on the arrays instead: a check is a few array operations,
not a Python loop, and formatting a CSV line costs no per-value Python call (``csv_text``).

numpy is imported here, and this module is imported only where bars are made or written, never by
``collect --help`` or ``status`` (``tests/test_startup.py`` keeps that so).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np

from ktrdr_collect.storage.series import Bar

FIELDS = ("open", "high", "low", "close", "volume")


class Columns(Sequence[Bar]):
    """Bars ``ts[i], values[i, 0..4]``: timestamps int64 seconds, values float64 (n, 5)."""

    __slots__ = ("ts", "values")

    def __init__(self, ts: np.ndarray, values: np.ndarray) -> None:
        if ts.ndim != 1 or values.shape != (len(ts), 5):
            raise ValueError(f"columns of different lengths: {ts.shape} timestamps, {values.shape} values")
        self.ts = ts
        self.values = values

    # building

    @classmethod
    def empty(cls) -> Columns:
        return cls(np.empty(0, np.int64), np.empty((0, 5), np.float64))

    @classmethod
    def from_bars(cls, bars: Iterable[Bar]) -> Columns:
        """Columns of bar tuples (exact: every value becomes the same float64 that ``float()`` gives)."""
        if isinstance(bars, Columns):
            return bars
        rows = bars if isinstance(bars, list | tuple) else list(bars)
        if not rows:
            return cls.empty()
        ts, *values = zip(*rows, strict=True)
        return cls(np.array(ts, np.int64), np.array(values, np.float64).T.copy())

    @classmethod
    def concat(cls, parts: Sequence[Columns]) -> Columns:
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(np.concatenate([p.ts for p in parts]), np.concatenate([p.values for p in parts]))

    # the Sequence[Bar] view

    def __len__(self) -> int:
        return len(self.ts)

    @overload
    def __getitem__(self, index: int) -> Bar: ...

    @overload
    def __getitem__(self, index: slice) -> Columns: ...

    def __getitem__(self, index: int | slice) -> Bar | Columns:
        if isinstance(index, slice):
            return Columns(self.ts[index], self.values[index])
        o, h, low, c, v = self.values[index].tolist()
        return (int(self.ts[index]), o, h, low, c, v)

    def __iter__(self) -> Iterator[Bar]:
        return zip(self.ts.tolist(), *self.value_lists(), strict=True)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Columns):
            return bool(np.array_equal(self.ts, other.ts) and np.array_equal(self.values, other.values))
        if isinstance(other, list | tuple):
            return list(self) == [tuple(bar) for bar in other]
        return NotImplemented

    def __add__(self, other: Sequence[Bar]) -> Columns:
        return Columns.concat([self, as_columns(other)])

    def __radd__(self, other: Sequence[Bar]) -> Columns:
        return Columns.concat([as_columns(other), self])

    __hash__ = None  # type: ignore[assignment]  (mutable arrays: not hashable, like a list)

    def __repr__(self) -> str:
        if not len(self):
            return "Columns([])"
        return f"Columns({len(self)} bars, {self[0]!r} .. {self[-1]!r})"

    def to_bars(self) -> list[Bar]:
        return list(self)

    def value_lists(self) -> list[list[float]]:
        """The five value columns as lists of Python floats (one C call each)."""
        return [self.values[:, i].tolist() for i in range(5)]

    # array operations the hot path uses

    @property
    def first(self) -> int:
        return int(self.ts[0])

    @property
    def last(self) -> int:
        return int(self.ts[-1])

    def window(self, start: int, end: int) -> Columns:
        """The bars with ``start <= ts < end``."""
        keep = (self.ts >= start) & (self.ts < end)
        return self if keep.all() else Columns(self.ts[keep], self.values[keep])

    def all_finite(self) -> bool:
        return bool(np.isfinite(self.values).all())

    def strictly_ascending(self) -> bool:
        return len(self.ts) < 2 or bool((self.ts[1:] > self.ts[:-1]).all())

    def sorted_unique(self) -> Columns:
        """Ascending, one bar per timestamp (the last one given wins, like a dict keyed by time)."""
        if self.strictly_ascending():
            return self
        order = np.argsort(self.ts, kind="stable")
        ts = self.ts[order]
        last_of_each = np.append(ts[1:] != ts[:-1], True)
        keep = order[last_of_each]
        return Columns(self.ts[keep], self.values[keep])


def as_columns(bars: Sequence[Bar] | Columns) -> Columns:
    return bars if isinstance(bars, Columns) else Columns.from_bars(bars)


_DIGITS2 = np.array([[48 + i // 10, 48 + i % 10] for i in range(100)], np.uint8)
"""The two ASCII digits of 0..99."""
_CLOCKS: list[np.ndarray] = []


def _clock_table() -> np.ndarray:
    """``b"HH:MM:SSZ"`` of every second of a day, as an (86400, 9) byte matrix (made once, 0.8 MB)."""
    if not _CLOCKS:
        sec = np.arange(86_400)
        table = np.empty((86_400, 9), np.uint8)
        table[:, 0:2], table[:, 3:5] = _DIGITS2[sec // 3600], _DIGITS2[sec // 60 % 60]
        table[:, 6:8] = _DIGITS2[sec % 60]
        table[:, 2] = table[:, 5] = ord(":")
        table[:, 8] = ord("Z")
        _CLOCKS.append(table)
    return _CLOCKS[0]


def iso_stamps(ts: np.ndarray) -> list[bytes]:
    """Epoch seconds -> ``b"2024-01-02T14:30:00Z"`` (storage.timeframes.format_ts's text), all at
    once: the civil date by Howard Hinnant's days-to-civil algorithm, digits and clock times
    gathered from tables into a byte matrix; no Python call per bar."""
    days, secs = np.divmod(ts.astype(np.int64), 86_400)
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    if len(ts) and (year.min() < 1000 or year.max() > 9999):  # not four digits: format_ts spells it
        from ktrdr_collect.storage.timeframes import format_ts

        return [format_ts(t).encode() for t in ts.tolist()]
    out = np.empty((len(ts), 20), np.uint8)
    out[:, 0:2], out[:, 2:4] = _DIGITS2[year // 100], _DIGITS2[year % 100]
    out[:, 5:7], out[:, 8:10] = _DIGITS2[month], _DIGITS2[doy - (153 * mp + 2) // 5 + 1]
    out[:, 4] = out[:, 7] = ord("-")
    out[:, 10] = ord("T")
    out[:, 11:] = _clock_table()[secs]
    return out.view("S20").ravel().tolist()
