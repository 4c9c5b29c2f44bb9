"""pause, resume, cancel and wait: what commands do to a job owned by another process."""

from __future__ import annotations

import os
import time
from typing import Any

from ktrdr_collect import paths
from ktrdr_collect.errors import CollectError, InvalidJobStateError
from ktrdr_collect.jobs import control, model
from ktrdr_collect.jobs.folders import LOG_FILE, iso_now, load_status, reader_view
from ktrdr_collect.jobs.lock import JobLock, is_locked
from ktrdr_collect.jobs.statefile import read_state, write_state
from ktrdr_collect.text import clean

ACK_TIMEOUT_S = 15.0
POLL_S = 0.01


class NoAcknowledgementError(CollectError):
    pass


def append_log(job_id: str, message: str) -> None:
    stamp = iso_now()
    line = f"{stamp} INFO    {clean(message)}\n".encode()
    fd = paths.open_private(paths.job_dir(job_id) / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _wait_until(job_id: str, done: Any, what: str, timeout: float = ACK_TIMEOUT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = load_status(job_id)
        if done(status):
            return status
        if time.monotonic() > deadline:
            raise NoAcknowledgementError(f"job {job_id} did not {what} within {timeout:.0f} s")
        time.sleep(POLL_S)


def _send_and_wait(job_id: str, command: str) -> dict[str, Any]:
    offset = control.send(paths.job_dir(job_id), command)

    def acknowledged(st: dict[str, Any]) -> bool:
        return (int(st.get("control_offset") or 0) >= offset or st["status"] in model.FINISHED
                or st["status"] == model.INTERRUPTED)

    return _wait_until(job_id, acknowledged, f"acknowledge {command}")


def pause(job_id: str) -> dict[str, Any]:
    model.check_pause(load_status(job_id)["status"])
    return _send_and_wait(job_id, "pause")


def _take_over(job_id: str) -> JobLock | None:
    """The lock of a job with no runner, or None if a runner (or another command) holds it."""
    lock = JobLock(paths.job_dir(job_id))
    return lock if lock.try_acquire(attempts=5, interval=0.01) else None


def resume(job_id: str) -> dict[str, Any]:
    status = load_status(job_id)["status"]
    model.check_resume(status)
    if status == model.PAUSED:
        return _send_and_wait(job_id, "resume")
    lock = _take_over(job_id)
    folder = paths.job_dir(job_id)
    if lock is None:
        current = load_status(job_id)["status"]
        raise InvalidJobStateError(f"Cannot resume job in {current} state (another process is resuming it)")
    try:
        state = read_state(folder)
        if state["status"] not in model.ACTIVE:
            model.check_resume(state["status"])
        state["status"] = model.PENDING
        state["updated_at"] = iso_now()
        write_state(folder, state, durable=True)
        append_log(job_id, f"job {job_id}: resumed after interruption")
        from ktrdr_collect.jobs.launch import spawn_runner

        spawn_runner(job_id, lock)
    finally:
        lock.release()
    return _wait_until(job_id, lambda st: st["status"] != model.PENDING, "start", timeout=ACK_TIMEOUT_S)


def _cancel_without_runner(job_id: str, lock: JobLock) -> dict[str, Any]:
    folder = paths.job_dir(job_id)
    try:
        state = read_state(folder)
        model.check_cancel(state["status"])
        state["status"] = model.CANCELLED
        state["completed_at"] = state["updated_at"] = iso_now()
        state["current_symbols"] = []
        state["eta_s"] = 0.0
        for entry in state["symbols"]:
            if entry["status"] in ("pending", "running"):
                entry["status"] = "cancelled"
        write_state(folder, state, durable=True)
        append_log(job_id, f"job {job_id}: cancelled (no runner was alive)")
    finally:
        lock.release()
    return reader_view(state, alive=False)


def cancel(job_id: str) -> dict[str, Any]:
    status = load_status(job_id)["status"]
    model.check_cancel(status)
    if status in (model.PENDING, model.INTERRUPTED):
        lock = _take_over(job_id)
        if lock is not None:
            return _cancel_without_runner(job_id, lock)
    folder = paths.job_dir(job_id)
    control.send(folder, "cancel")
    return _wait_until(
        job_id,
        lambda st: st["status"] in model.FINISHED and not is_locked(folder),
        "stop after cancel",
    )


def wait(job_id: str, timeout: float | None = None, poll: float = 0.1) -> dict[str, Any] | None:
    """The job's final (or interrupted) status; None if `timeout` ran out first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = load_status(job_id)
        if status["status"] in model.FINISHED or status["status"] == model.INTERRUPTED:
            wait_for_runner_exit(job_id)
            return status
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(poll)


def wait_for_runner_exit(job_id: str, timeout: float = 5.0) -> None:
    """The final state is written just before the runner exits; return once it has."""
    folder = paths.job_dir(job_id)
    deadline = time.monotonic() + timeout
    while is_locked(folder) and time.monotonic() < deadline:
        time.sleep(0.01)
