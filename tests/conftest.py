"""Shared fixtures: a private home per test, and a guard that fails tests which leak threads or
job runner processes."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ktrdr_collect.jobs.lock import holder_pid, is_locked
from tests.services import dask_cluster, redis_server, redis_url, s3_server, s3_url  # noqa: F401  (session services)

REPO = Path(__file__).resolve().parent.parent
COLLECT = [sys.executable, "-m", "ktrdr_collect"]


_homes: list[Path] = []


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """KTRDR_COLLECT_HOME pointed at a fresh folder (config, jobs and data all live there)."""
    h = tmp_path / "home"
    _homes.append(h)
    monkeypatch.setenv("KTRDR_COLLECT_HOME", str(h))
    monkeypatch.delenv("KTRDR_COLLECT_DEBUG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    return h


def live_runners(root: Path) -> list[tuple[Path, int | None]]:
    jobs = root / "jobs"
    if not jobs.is_dir():
        return []
    return [(d, holder_pid(d)) for d in jobs.iterdir() if d.is_dir() and is_locked(d)]


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves engine threads or a job runner process behind."""
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked_threads = [
        t.name for t in threading.enumerate()
        if t.ident not in before and t.is_alive() and t.name.startswith("ktrdr-")
    ]
    runners = [r for h in _homes for r in live_runners(h)]
    _homes.clear()
    for _, pid in runners:  # clean up before failing, so one leak does not cascade
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not leaked_threads, f"test leaked threads: {leaked_threads}"
    assert not runners, f"test left job runners running: {[str(d.name) for d, _ in runners]}"
