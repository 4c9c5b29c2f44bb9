"""What a job has stored, one line per write, appended just before the write: after a crash the
job's counts are rebuilt from it and the data files (state.json is written at most 10 times a
second and can lag behind the data files)."""

from __future__ import annotations

import contextlib
import json
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from ktrdr_collect import files, paths

JOURNAL_FILE = "stored"


class StoredJournal:
    def __init__(self, folder: Path) -> None:
        self.path = folder / JOURNAL_FILE
        self._fd: int | None = None

    def record(self, symbol: str, covered: tuple[int, int], bars: int) -> None:
        """Append one line, whole or not at all: a failed write (a full disk) is cut off again, so
        the next line never lands on a torn one."""
        if self._fd is None:
            self._fd = paths.open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        line = (json.dumps([symbol, covered[0], covered[1], bars]) + "\n").encode()
        size = os.fstat(self._fd).st_size
        try:
            files.write_all(self._fd, line)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def ranges(self) -> dict[str, list[tuple[int, int]]]:
        """The ranges each symbol's writes covered (a torn last line is skipped)."""
        found: dict[str, list[tuple[int, int]]] = defaultdict(list)
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return {}
        for raw in lines:
            try:
                symbol, start, end, _bars = json.loads(raw)
                found[str(symbol)].append((int(start), int(end)))
            except (ValueError, TypeError):
                continue
        return dict(found)

    def candles(self, count: Callable[[str, list[tuple[int, int]]], int]) -> dict[str, int]:
        """Bars this job stored, per symbol: the rows the data files hold inside the ranges it
        journaled (`count(symbol, ranges)`). A line is journaled just before its write, so a crash
        at any moment neither loses a stored bar nor counts one twice: a write that never happened
        adds no row, and a segment fetched again after the crash adds no row either."""
        return {symbol: count(symbol, ranges) for symbol, ranges in self.ranges().items()}
