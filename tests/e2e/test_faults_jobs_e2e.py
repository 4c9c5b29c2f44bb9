"""Fault injection on jobs, end to end (issue 15, "Nothing lost, nobody in"): folders owned by
another user, start-up errors on resume, a state.json that cannot be written, control files that
are truncated, deleted, corrupted or planted, a deleted lock file, a stopped runner, and a job
folder without a state. Real `collect` processes throughout; a second user is uid 65534 (nobody),
so the tests that need one skip when not run as root."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import (
    LONG_WINDOW,
    YEAR_WINDOW,
    collect,
    csv_bytes,
    data_dir,
    env_for,
    extra_home,
    job_diagnostics,
    job_folder,
    kill_runners,
    lines_of,
    poll_until,
    read_state,
    runner_gone,
    runner_pid,
    start_detached,
    status_json,
    wait_for_requests,
    wait_rc,
)

from ktrdr_collect.jobs.lock import is_locked

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user (uid 65534)")
QUICK = ["A1", "A2", "-t", "1d", "--start", "2023-01-02", "--end", "2023-03-01", "-o", "latency_ms=0"]
# A job that runs for a few seconds, so commands reach it while it runs; every test ends it.
SLOW = ["SL1", "SL2", *LONG_WINDOW, "-o", "latency_ms=60", "-o", "max_bars=100", "-w", "1"]  # ~7 s
# A job that is quick once resumed.
RESUMABLE = ["RS1", "RS2", *YEAR_WINDOW, "-o", "max_bars=100", "-w", "1"]


@contextlib.contextmanager
def slow_job(home: Path) -> Iterator[str]:
    """A running detached job; cancelled (or its runner killed) whatever the test does."""
    job_id = start_detached(home, *SLOW)
    try:
        wait_for_requests(home, job_id)
        yield job_id
    finally:
        if not runner_gone(home, job_id):
            collect(home, "cancel", job_id)
        kill_runners(home)


def interrupted_job(home: Path) -> str:
    """A job whose runner was killed (-9) part-way: it reads `interrupted`."""
    job_id = start_detached(home, *RESUMABLE, "-o", "latency_ms=40")
    wait_for_requests(home, job_id, at_least=2)
    pid = runner_pid(home, job_id)
    os.kill(pid, signal.SIGKILL)
    poll_until(lambda: runner_gone(home, job_id, pid), 5, what="killed runner to be gone")
    assert status_json(home, job_id)["status"] == "interrupted"
    return job_id


def reference_files(tmp_path: Path) -> dict[str, bytes]:
    with extra_home(tmp_path / "reference-home") as ref:
        r = collect(ref, "start", *RESUMABLE, "-o", "latency_ms=0", "-q")
        assert r.returncode == 0, r.stderr
        return csv_bytes(data_dir(ref))


def one_error(r: subprocess.CompletedProcess[str], *fragments: str) -> str:
    lines = lines_of(r.stderr)
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), (r.returncode, r.stderr)
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- ownership -----------------------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("folder", ["home", "jobs"])
def test_a_home_or_jobs_folder_of_another_user_is_refused(home: Path, folder: str) -> None:
    target = home if folder == "home" else home / "jobs"
    target.mkdir(parents=True)
    os.chown(target, NOBODY, NOBODY)
    r = collect(home, "start", *QUICK)
    one_error(r, str(target), "belongs to another user (uid 65534)")
    assert not (home / "jobs").exists() or os.listdir(home / "jobs") == []
    for command in (["list"], ["status"], ["status", "last"], ["prune"]):
        one_error(collect(home, *command), "belongs to another user")


def test_a_shared_home_of_ours_is_used_as_it_is(home: Path) -> None:
    home.mkdir()
    os.chmod(home, 0o1777)  # made by the user, as the user wanted it: never chmod'ed behind their back
    assert collect(home, "start", *QUICK, "-q").returncode == 0
    assert os.stat(home).st_mode & 0o7777 == 0o1777
    assert os.stat(home / "jobs").st_mode & 0o777 == 0o700  # what the tool creates is private


@needs_root
def test_a_job_folder_of_another_user_is_refused(home: Path) -> None:
    assert collect(home, "config", "set", "retention_days", "0").returncode == 0  # not indexed yet
    assert collect(home, "start", *QUICK, "-q").returncode == 0
    job_id = status_json(home, "last")["id"]
    os.chown(job_folder(home, job_id), NOBODY, NOBODY)
    for command in ("status", "show", "logs", "cancel", "resume"):
        r = collect(home, command, job_id)
        one_error(r, str(job_folder(home, job_id)), "belongs to another user")
    listing = collect(home, "list", "--json")
    assert listing.returncode == 0 and json.loads(listing.stdout) == []
    assert "belongs to another user" in listing.stderr


def write_as_nobody(path: Path, text: str) -> None:
    """Another user appends to a control file of theirs: a process of uid 65534 writes `text` to
    its stdout, which is the file (it could not get to the file through root's job folder)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        subprocess.run(["/bin/sh", "-c", 'printf "%s" "$1"', "sh", text], stdout=fd, check=True, timeout=30,
                       preexec_fn=lambda: os.setuid(NOBODY))
    finally:
        os.close(fd)


@needs_root
def test_only_the_owner_commands_a_job(home: Path) -> None:
    with slow_job(home) as job_id:
        control = job_folder(home, job_id) / "control"
        control.unlink(missing_ok=True)  # a control file planted by another user instead of ours
        control.touch()
        os.chown(control, NOBODY, NOBODY)
        os.chmod(control, 0o666)
        write_as_nobody(control, '\n{"id": "intruder", "cmd": "pause"}\n')
        log = job_folder(home, job_id) / "log"
        poll_until(lambda: "its commands are ignored" in log.read_text(), 5, what="the runner to refuse the file")
        state = read_state(home, job_id)
        assert state["status"] == "running" and "intruder" not in json.dumps(state.get("control_acks"))
        # our own command refuses to go through a file that is not ours, and says so
        one_error(collect(home, "pause", job_id), str(control), "belongs to another user (uid 65534)")
        control.unlink()
        r = collect(home, "pause", job_id)
        assert r.returncode == 0 and read_state(home, job_id)["status"] == "paused", r.stderr
        assert [a["cmd"] for a in read_state(home, job_id)["control_acks"]] == ["pause"]


# -- start-up errors and an unwritable state ----------------------------------------------------


def break_workers(home: Path, env: dict[str, str]) -> None:
    env["KTRDR_COLLECT_WORKERS"] = "eight"


def break_config(home: Path, env: dict[str, str]) -> None:
    (home / "config.toml").write_text("workers = [unclosed")


def uninstall_provider(home: Path, env: dict[str, str]) -> None:
    """As if the job's provider (a plugin) had been uninstalled since the job started."""
    for folder in (home / "jobs").iterdir():
        if (folder / "job.json").exists():  # the spec: what the runner starts the provider from
            spec = json.loads((folder / "job.json").read_text())
            spec["provider"] = "plugin-gone"
            (folder / "job.json").write_text(json.dumps(spec))


def repair(home: Path, job_id: str) -> None:
    (home / "config.toml").unlink(missing_ok=True)
    path = job_folder(home, job_id) / "job.json"
    spec = json.loads(path.read_text())
    spec["provider"] = "demo"
    path.write_text(json.dumps(spec))


@pytest.mark.parametrize(("breakage", "reason"), [
    (break_workers, "KTRDR_COLLECT_WORKERS"),
    (break_config, "not valid TOML"),
    (uninstall_provider, "plugin-gone"),
])
def test_a_start_up_error_leaves_the_job_interrupted_and_resumable(
        home: Path, tmp_path: Path, breakage: object, reason: str) -> None:
    job_id = interrupted_job(home)
    env = env_for(home)
    breakage(home, env)  # type: ignore[operator]
    r = subprocess.run([sys.executable, "-m", "ktrdr_collect", "resume", job_id], env=env,
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    line = one_error(r, f"job {job_id} is still interrupted", reason, f"collect resume {job_id}")
    assert "Traceback" not in r.stderr, line
    poll_until(lambda: runner_gone(home, job_id), 5, what="the runner that could not start to exit")
    repair(home, job_id)
    st = status_json(home, job_id)
    assert st["status"] == "interrupted" and reason in st["error"] and st["completed_at"] is None
    assert reason in collect(home, "show", job_id).stdout
    assert reason in collect(home, "logs", job_id).stdout
    assert wait_rc(home, job_id, timeout=10) == 6
    r = collect(home, "resume", job_id)
    assert r.returncode == 0, (r.stderr, job_diagnostics(home))
    assert wait_rc(home, job_id) == 0
    final = status_json(home, job_id)
    assert final["status"] == "completed" and final["error"] is None
    assert csv_bytes(data_dir(home)) == reference_files(tmp_path)


UNWRITABLE_STATE = """
import errno, sys
from ktrdr_collect.jobs import runner

real, allowed = runner.write_state, int(sys.argv[2])

def full_disk(folder, data, durable=False):
    global allowed
    if allowed <= 0:
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "state.json"))
    allowed -= 1
    real(folder, data, durable=durable)

runner.write_state = full_disk
sys.exit(runner.main([sys.argv[1]]))
"""


@pytest.mark.parametrize("writes_that_succeed", [0, 2])
def test_a_runner_that_cannot_write_its_state_stops_resumable(
        home: Path, tmp_path: Path, writes_that_succeed: int) -> None:
    job_id = interrupted_job(home)
    with open(job_folder(home, job_id) / "runner.err", "ab") as err:
        r = subprocess.run([sys.executable, "-c", UNWRITABLE_STATE, job_id, str(writes_that_succeed)],
                           env=env_for(home), stdout=subprocess.DEVNULL, stderr=err, timeout=60,
                           stdin=subprocess.DEVNULL)
    assert r.returncode == 6, job_diagnostics(home)
    assert not is_locked(job_folder(home, job_id))
    st = status_json(home, job_id)
    assert st["status"] == "interrupted", st
    assert "cannot write state.json: No space left on device" in st["error"]
    assert "cannot write state.json: No space left on device" in collect(home, "logs", job_id).stdout
    r = collect(home, "resume", job_id)  # space is back
    assert r.returncode == 0, (r.stderr, job_diagnostics(home))
    assert wait_rc(home, job_id) == 0
    assert status_json(home, job_id)["error"] is None
    assert csv_bytes(data_dir(home)) == reference_files(tmp_path)


# -- control commands and liveness ---------------------------------------------------------------


def truncate(control: Path) -> None:
    os.truncate(control, 0)


def delete(control: Path) -> None:
    control.unlink()


def add_garbage(control: Path) -> None:
    with open(control, "ab") as f:
        f.write(b'{"cmd": "pau')  # a torn line: no newline


@pytest.mark.parametrize("damage", [truncate, delete, add_garbage])
def test_a_damaged_control_file_loses_no_command(home: Path, damage: object) -> None:
    with slow_job(home) as job_id:
        control = job_folder(home, job_id) / "control"
        for command, status in (("pause", "paused"), ("resume", "running")):  # the reader is past 0
            r = collect(home, command, job_id)
            assert r.returncode == 0 and read_state(home, job_id)["status"] == status, r.stderr
        damage(control)  # type: ignore[operator]
        r = collect(home, "pause", job_id)
        assert r.returncode == 0, r.stderr
        assert read_state(home, job_id)["status"] == "paused"
        damage(control)  # type: ignore[operator]
        r = collect(home, "cancel", job_id)
        assert r.returncode == 0, r.stderr
        assert read_state(home, job_id)["status"] == "cancelled"
        acks = read_state(home, job_id)["control_acks"]
        assert [a["cmd"] for a in acks] == ["pause", "resume", "pause", "cancel"]


def test_a_command_whose_line_is_lost_before_the_runner_reads_it_is_sent_again(home: Path) -> None:
    """The sender keeps its line in the file until acknowledged; the reader acts on each id once."""
    from ktrdr_collect.jobs import control

    folder = home / "job"
    folder.mkdir(parents=True)
    reader = control.ControlReader(folder)
    first = control.send(folder, "pause")
    assert [c.id for c in reader.poll()] == [first]
    second = control.send(folder, "resume")
    os.truncate(folder / "control", 0)  # lost before the runner read it
    assert reader.poll() == [] and not control.holds(folder, second)
    control.send(folder, "resume", second)  # what a waiting sender does (actions.Delivery)
    control.send(folder, "pause", first)  # an old id again: never acted on twice
    assert [(c.id, c.cmd) for c in reader.poll()] == [(second, "resume")]


def test_deleting_the_lock_file_neither_kills_a_job_nor_allows_a_second_runner(home: Path) -> None:
    with slow_job(home) as job_id:
        folder = job_folder(home, job_id)
        pid = runner_pid(home, job_id)
        (folder / "lock").unlink()
        assert status_json(home, job_id)["status"] == "running"
        r = collect(home, "resume", job_id)
        one_error(r, "Cannot resume job in running state")
        r = collect(home, "pause", job_id)
        assert r.returncode == 0 and read_state(home, job_id)["status"] == "paused", r.stderr
        assert read_state(home, job_id)["runs"] == 1 and is_locked(folder)
        r = collect(home, "cancel", job_id)
        assert r.returncode == 0, r.stderr
        poll_until(lambda: runner_gone(home, job_id, pid), 5, what="the one runner to exit")


@pytest.mark.parametrize("command", ["pause", "cancel"])
def test_a_stopped_runner_gets_its_command_queued_and_says_so(home: Path, command: str) -> None:
    with slow_job(home) as job_id:
        pid = runner_pid(home, job_id)
        os.kill(pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            r = collect(home, command, job_id)
            took = time.monotonic() - began
        finally:
            os.kill(pid, signal.SIGCONT)
        one_error(r, f"runner (pid {pid}) is stopped", "queued; the job will act on it when it runs again")
        assert took < 10, took  # not the 15 s acknowledgement timeout
        expected = "paused" if command == "pause" else "cancelled"
        poll_until(lambda: read_state(home, job_id)["status"] == expected, 5, what=f"the job to be {expected}")


# -- a job folder without a state ---------------------------------------------------------------


def test_a_job_folder_without_state_is_shown_and_pruned_by_retention(home: Path) -> None:
    assert collect(home, "start", *QUICK, "-q").returncode == 0
    orphan = home / "jobs" / "lz000000-abcd"  # a `start` of an older version killed before its state
    orphan.mkdir()
    (orphan / "lock").write_text("12345\n")
    staging = home / "jobs" / ".lz000001-abcd.new"  # one of this version killed before the rename
    staging.mkdir()
    for path in (orphan, staging):
        old = time.time() - 40 * 86400
        os.utime(path, (old, old))
    listing = collect(home, "list")
    assert listing.returncode == 0 and listing.stderr == ""
    assert any(line.split()[:2] == ["lz000000-abcd", "failed"] for line in listing.stdout.splitlines())
    rows = json.loads(collect(home, "list", "--json", "--status", "failed").stdout)
    assert [(r["id"], r["status"], r["exit_code"]) for r in rows] == [("lz000000-abcd", "failed", 4)]
    assert rows[0]["error"].startswith("no state file")
    assert rows[0]["created_at"].startswith("2024-07-24")  # the creation stamp in its id
    r = collect(home, "prune", "--dry-run", "--json")
    assert json.loads(r.stdout)["pruned"] == ["lz000000-abcd"] and orphan.exists()
    r = collect(home, "prune", "--json")
    assert json.loads(r.stdout)["pruned"] == ["lz000000-abcd"]
    assert not orphan.exists() and not staging.exists()
    assert collect(home, "list").stderr == ""
