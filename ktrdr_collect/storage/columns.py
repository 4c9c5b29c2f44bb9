"""Bars as columns: the hot path's one type for a run of bars, from a provider's decode to the file.

``Columns`` holds a series' timestamps (int64 epoch seconds) and its open/high/low/close/volume
(float64, one row per bar) as numpy arrays. It is also a read-only ``Sequence`` of ``Bar`` tuples,
so code that walks bars one by one (merges, Parquet, tests) keeps working unchanged; the hot path
(pipeline checks, the CSV writer) works on the arrays instead: a check is a few array operations,
not a Python loop, and formatting a CSV line costs no per-value Python call (``csv_text``).

numpy is imported here, and this module is imported only where bars are made or written, never by
``collect --help`` or ``status`` (``tests/cli/test_startup.py`` keeps that so).
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
