"""Many jobs on one machine: pacing shared across processes, and 100 detached jobs at once."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import COLLECT


def collect(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KTRDR_COLLECT_HOME": str(home)}
    return subprocess.run(COLLECT + list(args), env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_three_jobs_share_the_rate_limit_without_being_throttled(home: Path) -> None:
    """demo rate_limit=20 refuses requests beyond 20/s across all jobs; pacing keeps all three under it."""
    ids = []
    for i in range(3):
        r = collect(home, "start", *[f"J{i}S{k}" for k in range(4)], "-t", "1h", "--start", "2022-01-01",
                    "--end", "2023-01-01", "-o", "latency_ms=0", "-o", "max_bars=200", "-o", "rate_limit=20",
                    "-w", "4", "--detach")
        assert r.returncode == 0, r.stderr
        ids.append(r.stdout.strip())
    states = []
    for job_id in ids:
        assert collect(home, "wait", job_id, "--timeout", "90").returncode == 0
        states.append(json.loads(collect(home, "status", job_id, "--json").stdout))
    assert sum(s["throttled"] for s in states) == 0
    assert sum(s["requests"] for s in states) == 3 * 4 * 10  # 1,827 bars a symbol: 10 requests of <= 200
    spans = [(s["started_at"], s["completed_at"]) for s in states]
    assert max(a for a, _ in spans) < min(b for _, b in spans)  # the three really ran at the same time


def test_without_shared_pacing_the_provider_would_throttle(home: Path) -> None:
    """The control for the test above: the demo server really refuses bursts over its limit."""
    from ktrdr_collect.engine.cancellation import CancellationToken
    from ktrdr_collect.providers.base import RateLimitedError
    from ktrdr_collect.providers.demo import DemoProvider

    provider = DemoProvider({"latency_ms": 0, "rate_limit": 20})
    refused = 0
    for _ in range(40):
        try:
            provider.fetch("X", "1d", 1672531200, 1675209600, CancellationToken())
        except RateLimitedError:
            refused += 1
    assert refused >= 15


@pytest.mark.slow  # ~80 s; its benchmark twin is bench/many_jobs
def test_a_hundred_detached_jobs(home: Path) -> None:
    started = time.monotonic()
    ids = []
    for i in range(100):
        r = collect(home, "start", f"M{i}", "--start", "2023-01-02", "--end", "2023-03-01", "-o", "latency_ms=300",
                    "--detach")
        assert r.returncode == 0, r.stderr
        ids.append(r.stdout.strip())
    running = json.loads(collect(home, "status", "--json").stdout)
    listed = json.loads(collect(home, "list", "--json").stdout)
    assert [j["id"] for j in listed] == list(reversed(ids))  # newest first, all of them
    assert {j["id"] for j in running} <= set(ids)
    assert all(j["status"] in ("pending", "running") for j in running)
    for job_id in ids:
        assert collect(home, "wait", job_id, "--timeout", "120").returncode == 0
    final = json.loads(collect(home, "list", "--json").stdout)
    assert len(final) == 100 and all(j["status"] == "completed" and j["candles"] == 42 for j in final)
    assert json.loads(collect(home, "status", "--json").stdout) == []
    assert time.monotonic() - started < 600  # a sanity bound, not a benchmark
