"""pause, resume, cancel and wait: what commands do to a job owned by another process.

A command sent to a runner is done when the runner acknowledges its id in state.json (see
jobs.control); until then the sender keeps its line in the control file. It never reports a
command as done that was not acted on: a runner that dies first, one that is stopped (SIGSTOP),
and one that stays silent are each reported as such.

While waiting, a sender reads only the head of state.json (`quick_status`: the status and the
acknowledgements, without the per-symbol list), so waiting costs the same for a job of 100,000
symbols as for one of 4; the whole status is read once, to return it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from ktrdr_collect import paths
from ktrdr_collect.errors import CollectError, InvalidJobStateError
from ktrdr_collect.jobs import control, model
from ktrdr_collect.jobs.folders import LOG_FILE, iso_now, job_folder, load_status, reader_view
from ktrdr_collect.jobs.lock import JobLock, holder_pid, is_locked
from ktrdr_collect.jobs.record import JobState
from ktrdr_collect.jobs.statefile import read_head, read_state, write_state
from ktrdr_collect.text import clean

ACK_TIMEOUT_S = 15.0
POLL_S = 0.01
RESEND_S = 0.25
"""How often an unacknowledged sender checks that its line is still in the control file."""
STOPPED_GRACE_S = 0.3
"""A runner acknowledges within ~0.1 s; after this long without one, see whether it is stopped."""

Done = Callable[[JobState, bool], bool]
"""Whether a command has done its work, given the job's status and whether its id was acknowledged."""


class NoAcknowledgementError(CollectError):
    pass


class CommandQueuedError(CollectError):
    """The runner is stopped (SIGSTOP): the command waits in the control file until it runs again."""


class JobStoppedError(CollectError):
    """The runner died before it acted on the command (the job reads `interrupted`)."""


class StartupError(CollectError):
    """A resumed job could not start (bad config, bad environment, ...): it stays interrupted."""


def append_log(job_id: str, message: str) -> None:
    stamp = iso_now()
    line = f"{stamp} INFO    {clean(message)}\n".encode()
    fd = paths.open_private(paths.job_dir(job_id) / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def quick_status(job_id: str) -> JobState:
    """The job's status as `load_status` reports it, without reading its `symbols` (which may be
    missing or partial): for polling. A job whose runner is gone takes the careful way."""
    folder = job_folder(job_id)
    head = read_head(folder)
    if head.active and not is_locked(folder):
        return load_status(job_id)  # interrupted, or its runner just wrote its end and exited
    return reader_view(head, alive=True)


def whole_status(job_id: str, quick: JobState) -> JobState:
    """The whole status (symbols and all) once polling is over; `quick` itself if the job moved on
    in between (so the caller reports the status it decided on)."""
    whole = load_status(job_id)
    return whole if whole.status == quick.status else quick


def _wait_until(job_id: str, done: Callable[[JobState], bool], what: str,
                timeout: float = ACK_TIMEOUT_S) -> JobState:
    deadline = time.monotonic() + timeout
    while True:
        status = quick_status(job_id)
        if done(status):
            return whole_status(job_id, status)
        if time.monotonic() > deadline:
            raise NoAcknowledgementError(f"job {job_id} did not {what} within {timeout:.0f} s")
        time.sleep(POLL_S)


def stopped_runner(folder: Path, status: JobState) -> int | None:
    """The pid of the job's runner if that process is stopped (SIGSTOP, a debugger), else None."""
    pid = holder_pid(folder) or status.pid
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None  # gone, or not Linux: the acknowledgement timeout still applies
    return pid if stat.rsplit(")", 1)[-1].split()[:1] in (["T"], ["t"]) else None


class Delivery:
    """One command on its way to a runner: sent, kept in the control file, awaited by id."""

    def __init__(self, job_id: str, command: str) -> None:
        self.job_id = job_id
        self.command = command
        self.folder = job_folder(job_id)
        self.id = control.send(self.folder, command)
        self.sent = time.monotonic()
        self.next_check = self.sent + RESEND_S

    def wait(self, done: Done, timeout: float = ACK_TIMEOUT_S) -> JobState:
        while True:
            status = quick_status(self.job_id)
            acked = control.find_ack(status, self.id) is not None
            if done(status, acked):
                return whole_status(self.job_id, status)
            if status.status == model.INTERRUPTED:
                raise JobStoppedError(
                    f"job {self.job_id} stopped before it acted on {self.command}: it is interrupted "
                    f"(`collect resume {self.job_id}` continues it)"
                )
            if not acked:
                self.check_queued(status)
            if time.monotonic() - self.sent > timeout:
                raise NoAcknowledgementError(
                    f"job {self.job_id} did not acknowledge {self.command} within {timeout:.0f} s "
                    f"(the command stays queued)"
                )
            time.sleep(POLL_S)

    def check_queued(self, status: JobState) -> None:
        """Put our line back if the control file lost it; report a stopped runner at once."""
        now = time.monotonic()
        if now >= self.next_check:
            self.next_check = now + RESEND_S
            if not control.holds(self.folder, self.id):
                control.send(self.folder, self.command, self.id)
        if now - self.sent >= STOPPED_GRACE_S and (pid := stopped_runner(self.folder, status)):
            raise CommandQueuedError(
                f"job {self.job_id}: its runner (pid {pid}) is stopped, so {self.command} is queued; "
                f"the job will act on it when it runs again"
            )


def _acked_or_over(status: JobState, acked: bool) -> bool:
    return acked or status.finished


def pause(job_id: str) -> JobState:
    model.check_pause(quick_status(job_id).status)
    return Delivery(job_id, "pause").wait(_acked_or_over)


def _take_over(job_id: str) -> JobLock | None:
    """The lock of a job with no runner, or None if a runner (or another command) holds it."""
    lock = JobLock(job_folder(job_id))
    return lock if lock.try_acquire(attempts=5, interval=0.01) else None


def resume(job_id: str) -> JobState:
    status = quick_status(job_id).status
    model.check_resume(status)
    if status == model.PAUSED:
        return Delivery(job_id, "resume").wait(_acked_or_over)
    return _restart(job_id)


def _restart(job_id: str) -> JobState:
    """Start a new runner for an interrupted job; fail (it stays interrupted) if it cannot start."""
    lock = _take_over(job_id)
    if lock is None:
        current = quick_status(job_id).status
        raise InvalidJobStateError(f"Cannot resume job in {current} state (another process is resuming it)")
    folder = job_folder(job_id)
    from ktrdr_collect.jobs import queue

    try:
        cap = queue.limit()
    except CollectError:  # a broken config: the runner says so, and the job stays interrupted
        cap = None
    try:
        with queue.queue_lock() if cap is not None else contextlib.nullcontext():
            state = read_state(folder)
            if not state.active:
                model.check_resume(state.status)
            queued = queue.must_wait(cap, exclude=job_id)  # `max_running_jobs` holds for resumed jobs too
            state.restart(iso_now(), queued=queued)
            control.skip_unread(folder, state)  # sent to a runner that died: those senders were told so
            write_state(folder, state, durable=True)
            if queued:
                queue.mark_queued(job_id)
                append_log(job_id, f"job {job_id}: resumed after interruption; queued (max_running_jobs)")
            else:
                append_log(job_id, f"job {job_id}: resumed after interruption")
                from ktrdr_collect.jobs.launch import spawn_runner

                spawn_runner(job_id, lock)
    finally:
        lock.release()
    if queued:
        return load_status(job_id)  # pending, with its place in the queue
    started = _wait_until(job_id, lambda st: st.status != model.PENDING, "start", timeout=ACK_TIMEOUT_S)
    if started.status == model.INTERRUPTED:
        reason = started.error or "its runner exited at once (see runner.err in the job folder)"
        raise StartupError(
            f"job {job_id} is still interrupted: {reason} (fix that, then `collect resume {job_id}`)"
        )
    return started


def _cancel_without_runner(job_id: str, lock: JobLock) -> JobState:
    folder = job_folder(job_id)
    try:
        state = read_state(folder)
        model.check_cancel(state.status)
        queued = state.queued
        state = state.view(alive=False)  # no runner: an active state is interrupted
        state.cancel(iso_now())
        write_state(folder, state, durable=True)
        append_log(job_id, f"job {job_id}: cancelled " + ("while queued" if queued else "(no runner was alive)"))
    finally:
        lock.release()
    from ktrdr_collect.jobs import queue

    queue.forget(job_id)
    queue.recover()  # a queued job this cancel held back may start now
    return reader_view(state, alive=False)


def cancel(job_id: str) -> JobState:
    status = quick_status(job_id).status
    model.check_cancel(status)
    if status in (model.PENDING, model.INTERRUPTED):
        lock = _take_over(job_id)
        if lock is not None:
            return _cancel_without_runner(job_id, lock)
    folder = job_folder(job_id)
    try:
        return Delivery(job_id, "cancel").wait(
            lambda st, acked: st.finished and not is_locked(folder)
        )
    except JobStoppedError:  # its runner died first: cancel the job here
        lock = _take_over(job_id)
        if lock is None:
            raise
        return _cancel_without_runner(job_id, lock)


def wait(job_id: str, timeout: float | None = None, poll: float = 0.1) -> JobState | None:
    """The job's final (or interrupted) status; None if `timeout` ran out first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = quick_status(job_id)
        if status.over:
            wait_for_runner_exit(job_id)
            return whole_status(job_id, status)
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(poll)


def wait_for_runner_exit(job_id: str, timeout: float = 5.0) -> None:
    """The final state is written just before the runner exits; return once it has."""
    folder = paths.job_dir(job_id)
    deadline = time.monotonic() + timeout
    while is_locked(folder) and time.monotonic() < deadline:
        time.sleep(0.01)
