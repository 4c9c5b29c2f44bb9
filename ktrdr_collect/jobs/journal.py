"""What a job has stored, one line per write, appended before the store records the range as
fetched: after a crash the job's counts are rebuilt from it, so nothing stored goes uncounted.
(state.json is written at most 10 times a second and can lag behind the data files.)"""

from __future__ import annotations

import contextlib
import json
import os
from collections import defaultdict
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

    def candles(self) -> dict[str, int]:
        """Bars stored per symbol; a range stored twice (a crash after the write) counts once."""
        seen: dict[tuple[str, int, int], int] = {}
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return {}
        for raw in lines:
            try:
                symbol, start, end, bars = json.loads(raw)
            except (ValueError, TypeError):
                continue  # a torn last line
            seen[(symbol, start, end)] = int(bars)
        totals: dict[str, int] = defaultdict(int)
        for (symbol, _, _), bars in seen.items():
            totals[symbol] += bars
        return dict(totals)
