"""kill -9 over the archive path: a binance job reading monthly archives (real runner processes),
killed at random moments and resumed, ends with files byte-identical to an uninterrupted API-only run."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.e2e_helpers import (
    collect,
    csv_bytes,
    extra_home,
    job_diagnostics,
    poll_until,
    read_state,
    runner_gone,
    runner_pid,
    start_detached,
    status_json,
    wait_rc,
)
from tests.providers.browser_fakes import KeepAliveRunning, serve_keep_alive
from tests.providers.fake_apis import Handler, Request
from tests.providers.fake_binance_archive import FakeArchive, exchange_route

LATENCY_S = 0.03
"""Each answer of the fake exchange waits this long, as a real one would (not synchronisation)."""
WINDOW = ["-t", "5m", "--start", "2024-10-01", "--end", "2025-04-01"]  # 6 months: 6 archives a pair


@pytest.fixture
def exchange() -> Iterator[KeepAliveRunning]:
    route = exchange_route(FakeArchive())

    def slow(h: Handler, r: Request) -> None:
        time.sleep(LATENCY_S)
        route(h, r)

    yield from serve_keep_alive(slow)


def options(api: KeepAliveRunning, source: str) -> list[str]:
    return ["-p", "binance", "-o", f"base_url={api.url}", "-o", f"archive_url={api.url}", "-o", "rate_limit=0",
            "-o", f"source={source}", "-w", "2"]


def test_kill9_while_reading_archives_then_resume_gives_the_api_paths_files(
        home: Path, tmp_path: Path, exchange: KeepAliveRunning) -> None:
    rng = random.Random(20261130)
    job_id = start_detached(home, "BTC/USDT", "ETH/USDT", *WINDOW, *options(exchange, "auto"))
    kills = seen = 0
    try:
        for _ in range(3):
            seen = poll_until(lambda want=seen + 1: (n := len(exchange.api.paths("/data/"))) >= want and n, 20,
                              what="more archive requests")
            time.sleep(rng.uniform(0.0, 0.15))  # a random moment, not synchronisation
            if read_state(home, job_id)["status"] not in ("running", "pending"):
                break
            pid = runner_pid(home, job_id)
            os.kill(pid, signal.SIGKILL)
            poll_until(lambda pid=pid: runner_gone(home, job_id, pid), 5, what="killed runner to be gone")
            if status_json(home, job_id)["status"] == "completed":
                break
            kills += 1
            r = collect(home, "resume", job_id)
            assert r.returncode == 0, r.stderr
        assert kills >= 1, "the job finished before it could be killed"
        assert wait_rc(home, job_id) == 0, job_diagnostics(home)
    finally:
        if not runner_gone(home, job_id):
            collect(home, "cancel", job_id)
    assert not exchange.api.paths("/api/")  # every span came from its archive
    with extra_home(tmp_path / "api-home") as ref:
        r = collect(ref, "start", "BTC/USDT", "ETH/USDT", *WINDOW, *options(exchange, "api"), "-q")
        assert r.returncode == 0, (r.stderr, job_diagnostics(ref))
        expected = csv_bytes(ref / "data" / "binance" / "5m")
    got = csv_bytes(home / "data" / "binance" / "5m")
    assert sorted(got) == sorted(expected) == ["BTC_USDT.csv", "ETH_USDT.csv"]
    for name in expected:
        assert got[name] == expected[name], f"{name} differs from the API path's"
