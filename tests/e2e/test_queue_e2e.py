"""The job queue across real processes: config `max_running_jobs`, hand-over by the runner that
ends, recovery of a stale queue by the next `collect` command, cancel of a queued job."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from ktrdr_collect.jobs.lock import is_locked
from tests.e2e.e2e_helpers import (
    collect,
    job_folder,
    job_folders,
    poll_until,
    popen,
    read_state,
    runner_gone,
    runner_pid,
    start_detached,
    wait_rc,
)


def set_limit(home: Path, n: int) -> None:
    r = collect(home, "config", "set", "max_running_jobs", str(n))
    assert r.returncode == 0, r.stderr


def state_or_none(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "state.json").read_bytes())
    except (OSError, ValueError):
        return None


def holding_a_slot(home: Path) -> list[str]:
    """Jobs running now, by liveness: the folder lock held, the state pending/running/paused and not
    queued. Scanned newest first: a queued job starts only after the runner handing over has written
    its end, so a scan in this order never counts both."""
    out = []
    for folder in reversed(job_folders(home)):
        if not is_locked(folder):
            continue
        st = state_or_none(folder)
        if st and st["status"] in ("pending", "running", "paused") and not st.get("queued"):
            out.append(folder.name)
    return out


def is_queued(home: Path, job_id: str) -> bool:
    st = read_state(home, job_id)
    return st["status"] == "pending" and bool(st.get("queued")) and not is_locked(job_folder(home, job_id))


def test_ten_jobs_run_at_most_two_at_a_time_in_creation_order(home: Path) -> None:
    set_limit(home, 2)
    # ten `start -d` at once (each job: one request of 1 s); ids follow the creation sequence
    procs = [popen(home, "start", f"Q{i}", "--days", "20", "-o", "latency_ms=1000", "-d") for i in range(10)]
    said_queued = {}
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        said_queued[out.strip()] = "queued, " in err
    ids = sorted(said_queued)
    assert len(ids) == 10
    assert not said_queued[ids[0]] and not said_queued[ids[1]]  # the first two found free slots
    queued = [j for j in ids if said_queued[j]]
    assert queued, said_queued
    st = json.loads(collect(home, "status", queued[-1], "--json").stdout)
    if st["status"] == "pending":  # unless the queue moved on in between
        assert st["queue_ahead"] >= 0

    peak, samples = 0, 0

    def all_done() -> bool:
        nonlocal peak, samples
        running = holding_a_slot(home)
        samples += 1
        peak = max(peak, len(running))
        assert len(running) <= 2, running
        return all((s := state_or_none(job_folder(home, j))) and s["status"] == "completed"
                   and not is_locked(job_folder(home, j)) for j in ids)

    poll_until(all_done, 120, interval=0.005, what="all ten jobs to complete")
    assert samples > 50 and peak >= 1
    states = {j: read_state(home, j) for j in ids}
    assert all(s["requests"] >= 1 and "queued" not in s for s in states.values())
    starts = [states[j]["started_at"] for j in queued]
    assert starts == sorted(starts), starts  # queued jobs started in creation order
    # never more than two at once, by the jobs' own records (each interval lies inside its slot)
    spans = [(s["started_at"], s["completed_at"]) for s in states.values()]
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])  # an end before a start at a tie
    level = top = 0
    for _, step in events:
        level += step
        top = max(top, level)
    assert top == 2, events
    assert not (home / "jobs" / ".queue").exists() or not os.listdir(home / "jobs" / ".queue")


def test_a_kill_9_of_a_running_job_lets_the_queue_go_on_after_the_next_command(home: Path) -> None:
    set_limit(home, 2)
    slow = ["--days", "60", "-o", "max_bars=5", "-w", "1"]  # ~9 requests
    first = start_detached(home, "K1", *slow, "-o", "latency_ms=400")
    second = start_detached(home, "K2", *slow, "-o", "latency_ms=2000")  # still running at the end
    third = start_detached(home, "K3", "--days", "10", "-o", "latency_ms=50")
    assert is_queued(home, third)
    poll_until(lambda: read_state(home, first)["status"] == "running", 20, what="the first job to run")
    pid = runner_pid(home, first)
    os.kill(pid, signal.SIGKILL)
    poll_until(lambda: runner_gone(home, first, pid), 20, what="the killed runner to be gone")
    assert is_queued(home, third)  # nobody handed over: the queue is stale
    r = collect(home, "list")  # any collect command recovers it
    assert r.returncode == 0, r.stderr
    assert not read_state(home, third).get("queued")
    assert wait_rc(home, third) == 0
    assert json.loads(collect(home, "status", first, "--json").stdout)["status"] == "interrupted"
    assert collect(home, "cancel", second).returncode == 0
    poll_until(lambda: runner_gone(home, second), 20, what="the second runner to exit")


def test_cancel_of_a_queued_job_and_a_foreground_start_that_waits(home: Path) -> None:
    set_limit(home, 1)
    blocker = start_detached(home, "C1", "--days", "60", "-o", "latency_ms=800", "-o", "max_bars=5", "-w", "1")
    queued = start_detached(home, "C2", "--days", "10")
    fg = popen(home, "start", "C3", "--days", "10", "-o", "latency_ms=50")
    poll_until(lambda: len(job_folders(home)) == 3 and read_state(home, job_folders(home)[-1].name).get("queued"),
               20, what="the foreground job to be queued")
    foreground = job_folders(home)[-1].name
    r = collect(home, "cancel", queued, "--json")
    assert r.returncode == 0, r.stderr
    st = read_state(home, queued)
    assert st["status"] == "cancelled" and st["completed_at"] and st["started_at"] is None
    assert st["requests"] == 0 and "queued" not in st
    assert json.loads(collect(home, "status", foreground, "--json").stdout)["queue_ahead"] == 0
    assert f"Job {foreground}: pending (queued, 0 ahead)" in collect(home, "status", foreground).stdout
    assert wait_rc(home, blocker) == 0
    out, err = fg.communicate(timeout=60)
    assert fg.returncode == 0, err
    assert f"Job {foreground} queued, 1 ahead" in err
    assert "Completed" in out or "completed" in out.lower()
    assert read_state(home, foreground)["status"] == "completed"
    assert read_state(home, queued)["status"] == "cancelled"  # never started by the hand-over
    poll_until(lambda: all(runner_gone(home, f.name) for f in job_folders(home)), 20, what="runners to exit")


def test_resume_of_an_interrupted_job_waits_for_a_slot_like_a_new_job(home: Path) -> None:
    set_limit(home, 1)
    slow = ["--days", "60", "-o", "max_bars=5", "-w", "1"]
    first = start_detached(home, "R1", *slow, "-o", "latency_ms=400")
    poll_until(lambda: read_state(home, first)["status"] == "running", 20, what="the first job to run")
    pid = runner_pid(home, first)
    os.kill(pid, signal.SIGKILL)
    poll_until(lambda: runner_gone(home, first, pid), 20, what="the killed runner to be gone")
    second = start_detached(home, "R2", *slow, "-o", "latency_ms=2000")  # the interrupted one holds no slot
    poll_until(lambda: read_state(home, second)["status"] == "running", 20, what="the second job to run")
    r = collect(home, "resume", first, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["status"] == "pending" and st["queue_ahead"] == 0
    assert is_queued(home, first)
    assert collect(home, "cancel", second).returncode == 0  # its runner hands the slot over
    assert wait_rc(home, first) == 0
