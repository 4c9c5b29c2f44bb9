"""Following a job's state.json from any process: the stream every renderer consumes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from ktrdr_collect import paths
from ktrdr_collect.errors import StateFileError
from ktrdr_collect.jobs.folders import load_status
from ktrdr_collect.jobs.lock import is_locked
from ktrdr_collect.jobs.record import JobState, SymbolEntry
from ktrdr_collect.jobs.statefile import STATE_FILE

POLL_S = 0.1


def follow(job_id: str, poll: float = POLL_S) -> Iterator[JobState]:
    """Yield the job's status every `poll` seconds until it ends (the last one yielded is final).

    A state file that cannot be read is retried for a second (a file system without atomic
    rename), then the error is raised.
    """
    failures = 0
    unchanged = Unchanged(job_id)
    status: JobState | None = None
    while True:
        try:
            if status is None or not unchanged.still(status):
                status = load_status(job_id)
        except StateFileError:
            failures += 1
            if failures * poll > 1.0:
                raise
            time.sleep(poll)
            continue
        failures = 0
        yield status
        if status.over:
            return
        time.sleep(poll)


class Unchanged:
    """Whether a job's state file is the one last read and its runner still holds the job: then
    the last status stands, and a huge job's 15 MB state is not parsed ten times a second."""

    def __init__(self, job_id: str) -> None:
        self.path = paths.job_dir(job_id) / STATE_FILE
        self.key: tuple[int, int, int] | None = None

    def still(self, status: JobState) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        same, self.key = key == self.key, key
        return same and status.active and is_locked(self.path.parent)


def finished_symbols(status: JobState, seen: set[str]) -> list[SymbolEntry]:
    """Series that reached completed/failed since the last call (updates `seen`)."""
    out = []
    for entry in status.symbols:
        key = f"{entry.symbol}@{entry.timeframe}"
        if entry.finished and key not in seen:
            seen.add(key)
            out.append(entry)
    return out
