"""Request pacing shared by every process on the machine.

A file-locked schedule (GCRA): each caller reserves the next free slot `1/rate` seconds after the
previous one, then waits for it. Wall-clock time, because the file outlives processes and boots.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from ktrdr_collect import paths

SAFETY = 0.98
"""Pace a little under the limit so timing noise never makes a provider count one too many."""


class SharedPacer:
    def __init__(self, path: Path, rate: float, clock: Callable[[], float] = time.time) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.path = path
        self.interval = 1.0 / (rate * SAFETY)
        self.clock = clock

    def reserve(self) -> float:
        """Book the next slot; return the wall-clock time at which it may start."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = paths.open_private(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            now = self.clock()
            raw = os.pread(fd, 64, 0).decode(errors="replace").strip()
            try:
                next_free = float(raw)
            except ValueError:
                next_free = now
            if next_free > now + 3600:  # clock moved backwards: start afresh
                next_free = now
            slot = max(now, next_free)
            data = repr(slot + self.interval).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            return slot
        finally:
            os.close(fd)

    def delay(self) -> float:
        """Reserve a slot and return how long to wait for it."""
        return max(0.0, self.reserve() - self.clock())


def pacer_for(provider_name: str, rate: float | None, folder: Path | None = None) -> SharedPacer | None:
    if not rate:
        return None
    folder = folder or paths.shared_dir() / "pacing"
    return SharedPacer(folder / f"{provider_name}.next", rate)
