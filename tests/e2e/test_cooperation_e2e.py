"""End to end: jobs on the same series cooperate through claims (storage/claims.py): two running
jobs never fetch one range, and a killed job's claims die with it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

from e2e_helpers import (
    COLLECT,
    LONG_WINDOW,
    YEAR_WINDOW,
    check_csv,
    collect,
    csv_bytes,
    data_dir,
    env_for,
    extra_home,
    job_diagnostics,
    job_folders,
    poll_until,
    read_state,
    runner_gone,
    runner_pid,
    start_detached,
    status_json,
    wait_for_requests,
    wait_rc,
)

SYMBOLS = ["CA", "CB", "CC", "CD"]
OPTS = [*LONG_WINDOW, "-o", "max_bars=250", "-w", "2"]


def reference(tmp_path: Path, symbols: list[str], opts: list[str]) -> tuple[dict[str, bytes], int]:
    """The files and request count of one job alone."""
    with extra_home(tmp_path / "reference-home") as ref:
        r = collect(ref, "start", *symbols, *opts, "-o", "latency_ms=0", "-q")
        assert r.returncode == 0, (r.returncode, r.stderr, job_diagnostics(ref))
        return csv_bytes(data_dir(ref)), status_json(ref, "last")["requests"]


def start_together(home: Path, n: int, *args: str) -> list[str]:
    """`collect start -d ARGS` n times at once; their job ids."""
    procs = [subprocess.Popen([*COLLECT, "start", *args, "--detach"], env=env_for(home), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        ids.append(out.strip())
    return ids


def test_two_identical_jobs_started_together_fetch_each_range_once(home: Path, tmp_path: Path) -> None:
    files, alone = reference(tmp_path, SYMBOLS, OPTS)
    ids = start_together(home, 2, *SYMBOLS, *OPTS, "-o", "latency_ms=20")
    for job_id in ids:
        assert wait_rc(home, job_id, timeout=120) == 0, job_diagnostics(home)
    total = sum(read_state(home, job_id)["requests"] for job_id in ids)
    assert total <= 1.05 * alone, (total, alone)
    assert csv_bytes(data_dir(home)) == files
    assert not list(data_dir(home).glob(".ktrdr/*.claims/*.claim"))  # every claim released


def test_a_job_waits_for_another_and_a_kill_frees_its_claims(home: Path, tmp_path: Path) -> None:
    """B waits for the range A is fetching (stage `waiting`); A is killed with SIGKILL: its claim
    dies with it, and B fetches the rest (not what A stored) and completes with the same file."""
    opts = [*YEAR_WINDOW, "-o", "max_bars=250", "-w", "1"]
    files, alone = reference(tmp_path, ["CW"], opts)
    first = start_detached(home, "CW", *opts, "-o", "latency_ms=500")
    wait_for_requests(home, first, at_least=2, timeout=30)  # A has stored a segment, fetches the next
    second = start_detached(home, "CW", *opts, "-o", "latency_ms=0")
    entry = poll_until(lambda: next((e for e in read_state(home, second)["symbols"] if e["stage"] == "waiting"), None),
                       30, what="the second job to wait for the first")
    assert entry["waiting_for"] == first
    poll_until(lambda: f"waiting for {first}" in collect(home, "show", second).stdout, 30,
               what=f"`show` to say 'waiting for {first}'")
    pid = runner_pid(home, first)
    os.kill(pid, signal.SIGKILL)
    poll_until(lambda: runner_gone(home, first, pid), 10, what="the killed runner to be gone")
    assert wait_rc(home, second, timeout=60) == 0, job_diagnostics(home)
    assert read_state(home, second)["requests"] < alone  # what A stored was not fetched again
    assert f"CW: waiting for {first}, which is fetching " in collect(home, "logs", second).stdout
    assert csv_bytes(data_dir(home)) == files
    assert {p.name for p in job_folders(home)} == {first, second}


def requests_or_done(home: Path, ids: list[str], after: int) -> bool:
    states = [read_state(home, j) for j in ids]
    return sum(s["requests"] for s in states) > after or all(s["status"] != "running" for s in states)


def kill(home: Path, job_id: str) -> None:
    pid = runner_pid(home, job_id)
    os.kill(pid, signal.SIGKILL)
    poll_until(lambda: runner_gone(home, job_id, pid), 10, what="the killed runner to be gone")


def test_kill9_among_cooperating_jobs_then_resume_gives_identical_files(home: Path, tmp_path: Path) -> None:
    """Two identical jobs; each in turn is killed with SIGKILL at a random moment (its claims die
    with it) and resumed: the files are those of one uninterrupted job."""
    rng = random.Random(20261130)
    files, alone = reference(tmp_path, SYMBOLS, OPTS)
    ids = start_together(home, 2, *SYMBOLS, *OPTS, "-o", "latency_ms=60")
    kills = 0
    for victim in ids * 2:
        total = sum(read_state(home, j)["requests"] for j in ids)
        poll_until(lambda: requests_or_done(home, ids, total), 30, what="more requests")  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.2))  # a random moment, not synchronisation
        if read_state(home, victim)["status"] != "running":
            continue
        kill(home, victim)
        kills += 1
        if status_json(home, victim)["status"] == "interrupted":
            r = collect(home, "resume", victim)
            assert r.returncode == 0, r.stderr
    assert kills >= 2, "the jobs finished before they could be killed"
    for job_id in ids:
        assert wait_rc(home, job_id, timeout=120) == 0, job_diagnostics(home)
    got = csv_bytes(data_dir(home))
    assert got == files
    for name in got:
        check_csv(data_dir(home) / name)
    total = sum(read_state(home, j)["requests"] for j in ids)
    # at most, per kill, each of the victim's 2 workers' request in flight and the segment it was writing
    assert total <= alone + 2 * 2 * kills, (total, alone, kills)
