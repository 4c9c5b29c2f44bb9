"""`collect retry JOB`: a new job for a finished job's failed, cancelled and never-started series."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.e2e_helpers import (
    collect,
    job_folder,
    poll_until,
    read_state,
    runner_gone,
    start_detached,
    wait_rc,
)


def test_retry_collects_what_did_not_complete_with_the_same_window_and_options(home: Path) -> None:
    old = start_detached(home, "AAPL", "BAD", "MSFT", "--days", "20", "-o", "fail_symbols=BAD", "-o", "latency_ms=5")
    assert wait_rc(home, old) == 3
    r = collect(home, "retry", old, "-d")
    assert r.returncode == 0, r.stderr
    new = r.stdout.strip()
    assert wait_rc(home, new) == 4  # the same options: BAD fails again
    before, after = read_state(home, old), read_state(home, new)
    assert [e["symbol"] for e in after["symbols"]] == ["BAD"]
    for key in ("provider", "timeframe", "start", "end"):
        assert after[key] == before[key], key
    specs = [json.loads((job_folder(home, j) / "job.json").read_text()) for j in (old, new)]
    for key in ("provider", "timeframe", "start", "end", "earliest", "options", "data_dir", "format", "workers"):
        assert specs[1][key] == specs[0][key], key
    assert specs[1]["symbols"] == ["BAD"] and specs[1]["retry_of"] == old
    assert json.loads(collect(home, "show", new, "--json").stdout)["retry_of"] == old
    assert f"retry of   {old}" in collect(home, "show", new).stdout
    assert "retry_of" not in read_state(home, old)


def test_retry_of_a_cancelled_job_takes_its_cancelled_and_never_started_series(home: Path) -> None:
    symbols = [f"R{i}" for i in range(6)]
    old = start_detached(home, *symbols, "--days", "20", "-o", "latency_ms=400", "-w", "1")
    poll_until(lambda: read_state(home, old)["symbols_completed"] >= 1, 30, what="one symbol to complete")
    assert collect(home, "cancel", old).returncode == 0
    poll_until(lambda: runner_gone(home, old), 20, what="the runner to exit")
    done = {e["symbol"] for e in read_state(home, old)["symbols"] if e["status"] == "completed"}
    assert done and len(done) < len(symbols)
    r = collect(home, "retry", old, "--json", "-d")
    assert r.returncode == 0, r.stderr
    new = json.loads(r.stdout)["id"]
    assert wait_rc(home, new) == 0
    assert {e["symbol"] for e in read_state(home, new)["symbols"]} == set(symbols) - done


def test_retry_refuses_unfinished_and_fully_completed_jobs(home: Path) -> None:
    done = start_detached(home, "AAPL", "--days", "10")
    assert wait_rc(home, done) == 0
    r = collect(home, "retry", done)
    assert r.returncode == 1 and "nothing to retry" in r.stderr
    running = start_detached(home, "MSFT", "--days", "60", "-o", "latency_ms=300", "-o", "max_bars=5", "-w", "1")
    r = collect(home, "retry", running)
    assert r.returncode == 1 and r.stderr.startswith("Error: Cannot retry "), r.stderr
    assert collect(home, "retry", "nope").stderr.strip() == "Error: Job not found: nope"
    assert collect(home, "cancel", running).returncode == 0
    poll_until(lambda: runner_gone(home, running), 20, what="the runner to exit")
