"""Several timeframes in one job (`-t 1h -t 1d`, `-t 1h,1d`): every (symbol, timeframe) pair is a
unit of work in status, show, the summary, the exit code, plan, resume and the Python API."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import ktrdr_collect
from tests.e2e.e2e_helpers import (
    collect,
    csv_bytes,
    extra_home,
    poll_until,
    read_state,
    runner_gone,
    runner_pid,
    start_detached,
    status_json,
    wait_rc,
)

WINDOW = ["--start", "2023-01-02", "--end", "2023-03-01", "-o", "latency_ms=0"]


def test_two_timeframes_in_one_job(home: Path) -> None:
    r = collect(home, "start", "AAPL", "MSFT", "BAD", "-t", "1h", "-t", "1d", *WINDOW, "-o", "fail_symbols=BAD")
    assert r.returncode == 3, r.stderr  # a failed pair fails the job's exit code, as a failed symbol does
    lines = r.stdout.splitlines()
    assert " · 1h,1d · " in lines[0] and lines[0].endswith(" · 6 series")
    assert "AAPL 1h: completed, 294 candles" in lines and "AAPL 1d: completed, 42 candles" in lines
    assert "BAD 1d: failed: unknown symbol BAD (demo fail_symbols)" in lines
    st = status_json(home, "last")
    assert st["timeframe"] == "1h" and st["timeframes"] == ["1h", "1d"]
    assert [(e["symbol"], e["timeframe"], e["status"]) for e in st["symbols"]] == [
        ("AAPL", "1h", "completed"), ("MSFT", "1h", "completed"), ("BAD", "1h", "failed"),
        ("AAPL", "1d", "completed"), ("MSFT", "1d", "completed"), ("BAD", "1d", "failed")]
    assert (st["symbols_total"], st["symbols_completed"], st["symbols_failed"]) == (6, 4, 2)
    assert st["candles"] == 2 * 294 + 2 * 42
    assert (home / "data/demo/1h/AAPL.csv").exists() and (home / "data/demo/1d/MSFT.csv").exists()
    shown = collect(home, "show", "last").stdout
    assert "SYMBOL  TF  STATUS" in shown and "1h,1d" in shown
    again = collect(home, "start", "AAPL", "MSFT", "-t", "1h,1d", *WINDOW, "--json")
    assert again.returncode == 0
    final = json.loads(again.stdout.splitlines()[-1])
    assert final["requests"] == 0 and final["timeframes"] == ["1h", "1d"]  # all stored: nothing fetched
    planned = json.loads(collect(home, "plan", "AAPL", "IBM", "-t", "1d,1h", *WINDOW, "--json").stdout)
    assert [(s["symbol"], s["timeframe"], s["requests"] > 0) for s in planned["series"]] == [
        ("AAPL", "1d", False), ("IBM", "1d", True), ("AAPL", "1h", False), ("IBM", "1h", True)]
    made = collect(home, "start", "AAPL", "IBM", "-t", "1d,1h", *WINDOW, "-q")
    assert made.returncode == 0 and status_json(home, "last")["requests"] == planned["requests"]


def test_a_job_of_two_timeframes_killed_and_resumed_stores_what_one_run_does(home: Path, tmp_path: Path) -> None:
    # 4h first (~50 requests), then 1h (~180): one SIGKILL while each timeframe is being fetched
    args = ["KA", "KB", "-t", "4h,1h", "--start", "2021-01-01", "--end", "2023-01-01", "-o", "max_bars=40",
            "-w", "2"]
    job_id = start_detached(home, *args, "-o", "latency_ms=30")

    def fetching(tf: str) -> bool:
        state = read_state(home, job_id)
        return any(e["timeframe"] == tf and e["status"] == "running" and e["segments_done"] >= 2
                   for e in state["symbols"])

    for tf in ("4h", "1h"):
        poll_until(lambda tf=tf: fetching(tf), 60, what=f"the job to be fetching {tf}")
        pid = runner_pid(home, job_id)
        os.kill(pid, signal.SIGKILL)
        poll_until(lambda pid=pid: runner_gone(home, job_id, pid), 10, what="the killed runner to be gone")
        assert status_json(home, job_id)["status"] == "interrupted"
        assert collect(home, "resume", job_id).returncode == 0
    assert wait_rc(home, job_id) == 0
    done = status_json(home, job_id)
    with extra_home(tmp_path / "reference") as ref:
        assert collect(ref, "start", *args, "-o", "latency_ms=0", "-q").returncode == 0
        reference = status_json(ref, "last")
        for tf in ("4h", "1h"):
            assert csv_bytes(home / "data/demo" / tf) == csv_bytes(ref / "data/demo" / tf), tf
    assert done["candles"] == reference["candles"]  # the journal counts each pair's bars once
    assert [(e["symbol"], e["timeframe"], e["candles"]) for e in done["symbols"]] == [
        (e["symbol"], e["timeframe"], e["candles"]) for e in reference["symbols"]]


def test_the_python_api_collects_several_timeframes(tmp_path: Path) -> None:
    results = ktrdr_collect.collect(["AAPL"], ["1h", "1d"], start="2023-01-02", end="2023-03-01",
                                    options={"latency_ms": 0}, data_dir=tmp_path, progress=False)
    assert [(r.symbol, r.timeframe, r.status, r.candles) for r in results] == [
        ("AAPL", "1h", "completed", 294), ("AAPL", "1d", "completed", 42)]
