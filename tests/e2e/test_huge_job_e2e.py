"""End to end, a job of 20,000 symbols (issue 15, "scale of the small things"): commands are
acknowledged with state.json saying so, state.json keeps the whole snapshot, and the runner rewrites
it within its byte budget; killed with SIGKILL and resumed, its counts still match the files.

Nothing here is a latency limit: timeouts only stop a hung test."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from e2e_helpers import (
    CONTRACT_KEYS,
    SYMBOL_KEYS,
    check_csv,
    collect,
    job_folder,
    poll_until,
    read_state,
    runner_gone,
    runner_pid,
    start_detached,
    status_json,
    wait_for_requests,
)

from ktrdr_collect.jobs.runner import WRITE_BYTES_PER_S

WINDOW = ["-t", "1d", "--start", "2023-11-01", "--end", "2023-12-01", "-o", "max_bars=5"]
WRITES_RE = re.compile(r"state\.json written (\d+) times, ([\d.]+) MB, [\d.]+ s of CPU in ([\d.]+) s")


def symbols_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "symbols.txt"
    path.write_text("".join(f"H{i:05d}\n" for i in range(n)))
    return path


def check_whole(state: dict, n: int) -> None:  # type: ignore[type-arg]
    assert set(state) >= CONTRACT_KEYS, CONTRACT_KEYS - set(state)
    assert state["symbols_total"] == n and len(state["symbols"]) == n
    assert all(set(e) >= SYMBOL_KEYS for e in state["symbols"][:: n // 50])
    assert state["symbols_completed"] == sum(e["status"] == "completed" for e in state["symbols"])


def stored_rows(home: Path) -> dict[str, int]:
    return {p.stem: len(check_csv(p)) for p in (home / "data" / "demo" / "1d").glob("*.csv")}


def test_commands_on_a_20000_symbol_job_and_its_state_writes(home: Path, tmp_path: Path) -> None:
    n = 20_000
    job_id = start_detached(home, "-f", str(symbols_file(tmp_path, n)), *WINDOW, "-o", "latency_ms=100", "-w", "4")
    try:
        wait_for_requests(home, job_id, at_least=8, timeout=60)
        for command, status in (("pause", "paused"), ("resume", "running"), ("pause", "paused")):
            r = collect(home, command, job_id)
            assert r.returncode == 0 and status in r.stdout, r.stderr
            on_disk = read_state(home, job_id)  # scripts read the file: it says so already
            assert on_disk["status"] == status and on_disk["control_acks"][-1]["cmd"] == command
            check_whole(on_disk, n)
        assert status_json(home, job_id)["status"] == "paused"
        r = collect(home, "cancel", job_id)
        assert r.returncode == 0, r.stderr
    finally:
        if not runner_gone(home, job_id):
            collect(home, "cancel", job_id)
    final = read_state(home, job_id)
    assert final["status"] == "cancelled" and final["completed_at"]
    check_whole(final, n)
    done = {e["symbol"]: e["candles"] for e in final["symbols"] if e["status"] == "completed"}
    assert done and {s: rows for s, rows in stored_rows(home).items() if s in done} == done
    # The runner says what writing state.json cost it; paced writes stay within the byte budget,
    # on top of the unpaced ones: the start, three commands, the cancel and the end.
    found = WRITES_RE.findall((job_folder(home, job_id) / "log").read_text())
    assert found, "the runner did not log its state writes"
    writes, megabytes, seconds = (float(x) for x in found[-1])
    size = (job_folder(home, job_id) / "state.json").stat().st_size
    assert megabytes * 1e6 <= WRITE_BYTES_PER_S * seconds + 8 * size, (writes, megabytes, seconds, size)


def test_a_big_job_killed_and_resumed_counts_what_its_files_hold(home: Path, tmp_path: Path) -> None:
    n = 5_000
    job_id = start_detached(home, "-f", str(symbols_file(tmp_path, n)), *WINDOW, "-o", "latency_ms=10", "-w", "4")
    try:
        for _ in range(2):
            wait_for_requests(home, job_id, at_least=read_state(home, job_id)["requests"] + 40, timeout=60)
            pid = runner_pid(home, job_id)
            os.kill(pid, signal.SIGKILL)
            poll_until(lambda: runner_gone(home, job_id, pid), 5, what="the killed runner to be gone")  # noqa: B023
            assert status_json(home, job_id)["status"] == "interrupted"
            r = collect(home, "resume", job_id)
            assert r.returncode == 0, r.stderr
        wait_for_requests(home, job_id, at_least=read_state(home, job_id)["requests"] + 40, timeout=60)
        assert collect(home, "cancel", job_id).returncode == 0
    finally:
        if not runner_gone(home, job_id):
            collect(home, "cancel", job_id)
    final = read_state(home, job_id)
    check_whole(final, n)
    rows = stored_rows(home)
    assert final["candles"] == sum(rows.values())
    for entry in final["symbols"]:
        if entry["status"] == "completed":
            assert rows[entry["symbol"]] == entry["candles"], entry
