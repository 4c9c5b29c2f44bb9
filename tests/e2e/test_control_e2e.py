"""End to end: pause, resume, cancel, Ctrl-C and readers of state.json, across real processes."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from e2e_helpers import (
    FINISHED,
    LONG_WINDOW,
    YEAR_WINDOW,
    check_csv,
    collect,
    csv_bytes,
    data_dir,
    extra_home,
    job_diagnostics,
    job_folder,
    job_folders,
    lines_of,
    poll_until,
    popen,
    read_state,
    runner_gone,
    runner_pid,
    start_detached,
    status_json,
    wait_for_requests,
    wait_rc,
)

from ktrdr_collect.jobs.lock import is_locked
from ktrdr_collect.jobs.record import JobState

PAUSE_SYMBOLS = ["PA1", "PA2", "PA3", "PA4"]
PAUSE_OPTS = [*YEAR_WINDOW, "-o", "max_bars=200", "-w", "2"]


def reference(tmp_path: Path, symbols: list[str], opts: list[str]) -> tuple[dict[str, bytes], int]:
    """The files and request count of an uninterrupted, fast run of the same job in another home."""
    with extra_home(tmp_path / "reference-home") as ref:
        r = collect(ref, "start", *symbols, *opts, "-o", "latency_ms=0", "-q")
        assert r.returncode == 0, (r.returncode, r.stderr, job_diagnostics(ref))
        files = csv_bytes(data_dir(ref))
        requests = status_json(ref, "last")["requests"]
    assert sorted(files) == sorted(f"{s}.csv" for s in symbols)
    return files, requests


def test_pause_stops_new_requests_and_resume_gives_identical_files(home: Path, tmp_path: Path) -> None:
    workers = 2
    job_id = start_detached(home, *PAUSE_SYMBOLS, *PAUSE_OPTS, "-o", "latency_ms=100")
    try:
        wait_for_requests(home, job_id)
        p = collect(home, "pause", job_id)
        assert p.returncode == 0, p.stderr
        assert "paused" in p.stdout
        t0 = time.monotonic()
        at_pause = read_state(home, job_id)
        assert at_pause["status"] == "paused"
        assert status_json(home, job_id)["status"] == "paused"
        samples: list[tuple[float, int]] = []
        while (t := time.monotonic() - t0) < 1.5:
            samples.append((t, read_state(home, job_id)["requests"]))
            time.sleep(0.02)
        assert at_pause["requests"] < 40, "the job ended before it could be paused"
        first = at_pause["requests"]
        assert max(n for _, n in samples) - first <= workers, samples
        settled = [n for t, n in samples if t >= 1.0]
        assert settled and len(set(settled)) == 1, samples
        assert read_state(home, job_id)["status"] == "paused"
        assert is_locked(job_folder(home, job_id))

        r = collect(home, "resume", job_id)
        assert r.returncode == 0, r.stderr
        assert read_state(home, job_id)["status"] in ("running", "completed")
        assert wait_rc(home, job_id) == 0
    finally:
        if not runner_gone(home, job_id):
            collect(home, "cancel", job_id)
    st = status_json(home, job_id)
    files, ref_requests = reference(tmp_path, PAUSE_SYMBOLS, PAUSE_OPTS)
    assert csv_bytes(data_dir(home)) == files
    assert st["status"] == "completed" and st["requests"] == ref_requests  # nothing fetched twice
    assert st["percent"] == 100


def test_cancel_running_job_stops_within_a_second_and_keeps_data(home: Path) -> None:
    job_id = start_detached(home, "CA1", "CA2", "CA3", *LONG_WINDOW, "-o", "latency_ms=100",
                            "-o", "max_bars=50", "-w", "2")  # ~17 s: still running under any load
    folder = job_folder(home, job_id)
    wait_for_requests(home, job_id, at_least=4)
    pid = runner_pid(home, job_id)
    r = collect(home, "cancel", job_id)
    returned = time.monotonic()
    assert r.returncode == 0, r.stderr
    assert "cancelled" in r.stdout
    # Within 1 s of the command returning: cancelled, completed_at set, runner gone (checked in-process,
    # so that the start-up time of another `collect` does not count).
    final = poll_until(
        lambda: (s := read_state(home, job_id))["status"] == "cancelled" and s["completed_at"] and s, 1.0,
        what="state.json to say cancelled",
    )
    poll_until(lambda: not is_locked(folder) and runner_gone(home, job_id, pid), 1.0, what="runner exit")
    assert time.monotonic() - returned <= 1.0 + 0.5  # the two polls above share the one second (+ slack)
    st = status_json(home, job_id)
    assert st["status"] == "cancelled" and st["completed_at"] == final["completed_at"]
    assert st["current_symbols"] == []
    assert st["percent"] < 100
    assert all(e["status"] != "running" for e in st["symbols"]), st["symbols"]
    stored = sorted(data_dir(home).glob("*.csv"))
    assert stored, "no data was stored before the cancel"
    assert sum(len(check_csv(p)) for p in stored) == st["candles"] > 0
    assert wait_rc(home, job_id) == 5
    # Cancelled is final.
    again = collect(home, "cancel", job_id)
    assert again.returncode == 1 and lines_of(again.stderr) == ["Error: Cannot cancel cancelled job"]


def test_cancel_paused_job(home: Path) -> None:
    job_id = start_detached(home, "CP1", "CP2", *LONG_WINDOW, "-o", "latency_ms=100", "-o", "max_bars=50",
                            "-w", "2")  # ~11 s: still running when the pause lands, under any load
    wait_for_requests(home, job_id)
    assert collect(home, "pause", job_id).returncode == 0
    r = collect(home, "cancel", job_id)
    assert r.returncode == 0, r.stderr
    poll_until(lambda: runner_gone(home, job_id), 1.0, what="runner exit")
    st = status_json(home, job_id)
    assert st["status"] == "cancelled" and st["completed_at"]


def test_wrong_state_transitions_and_unknown_job(home: Path) -> None:
    r = collect(home, "start", "DONE", *YEAR_WINDOW, "-o", "latency_ms=0", "-q")
    assert r.returncode == 0
    job_id = status_json(home, "last")["id"]
    cases = {
        "cancel": "Error: Cannot cancel completed job",
        "pause": "Error: Cannot pause job in completed state",
        "resume": "Error: Cannot resume job in completed state",
    }
    for command, message in cases.items():
        r = collect(home, command, job_id)
        assert r.returncode == 1, (command, r.stdout, r.stderr)
        assert lines_of(r.stderr) == [message], (command, r.stderr)
        assert r.stdout == ""
    assert status_json(home, job_id)["status"] == "completed"
    for command in ("cancel", "pause", "resume", "status", "show", "wait", "watch"):
        r = collect(home, command, "X")
        assert r.returncode == 1, (command, r.stderr)
        assert lines_of(r.stderr) == ["Error: Job not found: X"], (command, r.stderr)


def test_ctrl_c_in_foreground_cancels_job_and_exits_130(home: Path) -> None:
    # ~220 requests of 100 ms on 2 workers: ~11 s, so the job is still running when the signal lands,
    # however loaded the machine (it ran 1.4 s before, and a CI run under load saw it finish first)
    proc = popen(home, "start", "CC1", "CC2", *LONG_WINDOW, "-o", "latency_ms=100", "-o", "max_bars=50",
                 "-w", "2")
    try:
        folder = poll_until(lambda: job_folders(home) and job_folders(home)[0], 20, what="job folder")
        job_id = folder.name
        poll_until(lambda: (folder / "state.json").exists(), 10, what="state.json")
        wait_for_requests(home, job_id)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    poll_until(lambda: runner_gone(home, job_id), 1.0, what="runner exit")
    st = status_json(home, job_id)
    assert st["status"] == "cancelled" and st["completed_at"]
    assert sum(len(check_csv(p)) for p in data_dir(home).glob("*.csv")) == st["candles"]


def test_state_json_never_torn_for_a_tight_reader(home: Path) -> None:
    symbols = [f"R{i:02d}" for i in range(24)]
    job_id = start_detached(home, *symbols, "-t", "1h", "--start", "2022-06-01", "--end", "2023-01-01",
                            "-o", "latency_ms=15", "-o", "max_bars=100", "-w", "4")
    path = job_folder(home, job_id) / "state.json"
    reads = failures = 0
    statuses = set()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                st = json.loads(path.read_bytes())
            except (ValueError, OSError) as e:
                failures += 1
                assert failures < 5, f"state.json unreadable: {e!r}"
                continue
            reads += 1
            statuses.add(st["status"])
            if st["status"] in FINISHED:
                break
    finally:
        rc = wait_rc(home, job_id)
    assert failures == 0
    assert "running" in statuses and "completed" in statuses
    assert reads >= 1000, reads
    assert rc == 0


@pytest.mark.parametrize("command", ["pause", "cancel"])
def test_control_commands_accept_prefix_and_last(home: Path, command: str) -> None:
    job_id = start_detached(home, "PX1", *LONG_WINDOW, "-o", "latency_ms=100", "-o", "max_bars=50",
                            "-w", "1")  # ~11 s: still running when the command lands, under any load
    try:
        wait_for_requests(home, job_id)
        r = collect(home, command, job_id[:10] if command == "pause" else "last", "--json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["id"] == job_id
        assert st["status"] == ("paused" if command == "pause" else "cancelled")
    finally:
        collect(home, "cancel", job_id)
    poll_until(lambda: runner_gone(home, job_id), 1.0, what="runner exit")


def test_job_that_ends_while_being_read_is_not_reported_interrupted(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ktrdr_collect.jobs import folders

    job_id = start_detached(home, "RACE", *YEAR_WINDOW, "-o", "latency_ms=30", "-o", "max_bars=300", "-w", "1")
    folder = job_folder(home, job_id)
    real_read = folders.read_state
    seen: list[str] = []

    def descheduled_reader(path: Path) -> JobState:
        """Reads state.json, then (like a preempted reader) only gets on after the runner ended."""
        state = real_read(path)
        seen.append(state.status)
        poll_until(lambda: not is_locked(path), 30, what="the job to end")
        return state

    try:
        wait_for_requests(home, job_id)
        with monkeypatch.context() as m:
            m.setattr(folders, "read_state", descheduled_reader)
            view = folders.load_status(job_id)
    finally:
        rc = wait_rc(home, job_id)
    assert seen[0] == "running"  # the first read saw the job running, the lock was free by the probe
    assert rc == 0 and read_state(home, job_id)["status"] == "completed"
    assert not is_locked(folder)
    assert view.status != "interrupted"
