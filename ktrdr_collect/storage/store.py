"""The one interface every data format implements (CsvStore, ParquetStore: siblings, neither
knows the other; what they share is plain functions in storage.series)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from ktrdr_collect.storage.gaps import Interval
from ktrdr_collect.storage.series import Bar


@runtime_checkable
class Store(Protocol):
    """Bars of (provider, timeframe, symbol) series under ``root`` in one format, with the ranges
    fetched for each. Writes are crash-safe and take the series' lock themselves."""

    root: Path
    format: str
    """``csv`` or ``parquet`` (what ``--format`` calls it)."""
    suffix: str
    """The data file's (or folder's) name ending: ``.csv``, ``.parquet``."""

    # where
    def folder(self, provider: str, timeframe: str) -> Path: ...

    def path(self, provider: str, timeframe: str, symbol: str) -> Path: ...

    def coverage_path(self, provider: str, timeframe: str, symbol: str) -> Path: ...

    def lock_path(self, provider: str, timeframe: str, symbol: str) -> Path: ...

    def lock(self, provider: str, timeframe: str, symbol: str) -> contextlib.AbstractContextManager[None]: ...

    # reading
    def read(self, provider: str, timeframe: str, symbol: str, start: int | None = None,
             end: int | None = None) -> list[Bar]: ...

    def first_ts(self, provider: str, timeframe: str, symbol: str) -> int | None: ...

    def last_ts(self, provider: str, timeframe: str, symbol: str) -> int | None: ...

    def coverage(self, provider: str, timeframe: str, symbol: str) -> list[Interval]: ...

    def count(self, provider: str, timeframe: str, symbol: str, ranges: Sequence[Interval]) -> int: ...

    def row_count(self, provider: str, timeframe: str, symbol: str) -> int: ...

    def size(self, provider: str, timeframe: str, symbol: str) -> int: ...

    # writing
    def write(self, provider: str, timeframe: str, symbol: str, bars: Sequence[Bar], covered: Interval) -> int: ...

    def replace(self, provider: str, timeframe: str, symbol: str, bars: Sequence[Bar],
                ranges: Sequence[Interval]) -> None: ...

    def set_aside(self, provider: str, timeframe: str, symbol: str, tag: str) -> Path | None: ...

    def erase(self, provider: str, timeframe: str, symbol: str, start: int | None = None,
              end: int | None = None) -> int: ...
