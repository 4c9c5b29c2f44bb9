"""Following a job's state.json from any process: the stream every renderer consumes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ktrdr_collect.errors import StateFileError
from ktrdr_collect.jobs import model
from ktrdr_collect.jobs.folders import load_status

POLL_S = 0.1


def is_over(status: dict[str, Any]) -> bool:
    return status["status"] in model.FINISHED or status["status"] == model.INTERRUPTED


def follow(job_id: str, poll: float = POLL_S) -> Iterator[dict[str, Any]]:
    """Yield the job's status every `poll` seconds until it ends (the last one yielded is final).

    A state file that cannot be read is retried for a second (a file system without atomic
    rename), then the error is raised.
    """
    failures = 0
    while True:
        try:
            status = load_status(job_id)
        except StateFileError:
            failures += 1
            if failures * poll > 1.0:
                raise
            time.sleep(poll)
            continue
        failures = 0
        yield status
        if is_over(status):
            return
        time.sleep(poll)


def finished_symbols(status: dict[str, Any], seen: set[str]) -> list[dict[str, Any]]:
    """Symbols that reached completed/failed since the last call (updates `seen`)."""
    out = []
    for entry in status.get("symbols", []):
        if entry["status"] in ("completed", "failed") and entry["symbol"] not in seen:
            seen.add(entry["symbol"])
            out.append(entry)
    return out
