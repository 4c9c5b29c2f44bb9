"""Following a job reads its state file again only when it changed (a huge job's state is large)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ktrdr_collect.cli import follow as follow_mod
from ktrdr_collect.jobs.lock import JobLock
from ktrdr_collect.jobs.record import JobState


def test_an_unchanged_state_is_not_parsed_again(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = home / "jobs" / "job-1"
    folder.mkdir(parents=True, mode=0o700)
    (folder / "state.json").write_text(json.dumps({"schema": 1, "status": "running"}))
    lock = JobLock(folder)
    assert lock.try_acquire()
    loads: list[int] = []

    def load(job_id: str) -> JobState:
        loads.append(1)
        return JobState(job_id, "demo", "1d", "2024-01-01", "2024-02-01", "2024-03-01",
                        status=json.loads((folder / "state.json").read_text())["status"])

    monkeypatch.setattr(follow_mod, "load_status", load)
    monkeypatch.setattr(follow_mod.time, "sleep", lambda s: None)
    stream = follow_mod.follow("job-1")
    try:
        for _ in range(5):
            assert next(stream).status == "running"
        assert len(loads) == 2  # the first read, then once to learn the file's identity
        os.utime(folder / "state.json", ns=(1, 1))  # the runner wrote it again
        (folder / "state.json").write_text(json.dumps({"schema": 1, "status": "paused"}))
        assert next(stream).status == "paused" and len(loads) == 3
    finally:
        lock.release()
    assert next(stream).status == "paused" and len(loads) == 4  # no runner any more: read again
