"""The job queue: with config `max_running_jobs`, a job beyond it waits `pending` and starts by
itself, in creation order, when a slot frees. There is no daemon:

- a queued job is `pending` with `"queued": true` in its state and an empty file
  `jobs/.queue/<id>` (ids sort in creation order); it has no process and no lock, and readers show
  it `pending` (not `interrupted`) while its queue entry exists;
- the runner that ends hands over: after its last write it starts the oldest queued jobs for the
  slots now free (`dispatch`), then exits;
- a queue nobody handed over (a runner killed with -9) is recovered by the next `collect`
  command: `recover` is one listing of `jobs/.queue` when the queue is empty, else `dispatch`.

A running job is one whose folder lock is held (its runner lives) and whose state is pending,
running or paused and not queued: liveness comes from the lock, never from pids or status alone.
A paused job keeps its slot. Everything that decides (admission in `create_job`, `dispatch`) holds
an exclusive lock on `jobs/.queue`, so two deciders never take the same slot.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ktrdr_collect import paths
from ktrdr_collect.errors import StateFileError
from ktrdr_collect.jobs import model
from ktrdr_collect.jobs.folders import folder_names, iso_now, stamp_of
from ktrdr_collect.jobs.lock import JobLock, is_locked
from ktrdr_collect.jobs.record import JobState
from ktrdr_collect.jobs.statefile import read_head, read_state, write_state

log = logging.getLogger("ktrdr_collect.job")
QUEUE_DIR = ".queue"
NUDGE_S = 1.0
"""A process that keeps reading a queued job (`wait`, a foreground `start`) recovers the queue at
most this often."""
_last_nudge = 0.0


def queue_dir() -> Path:
    return paths.jobs_dir() / QUEUE_DIR


def limit() -> int | None:
    from ktrdr_collect.config import load_settings

    value = load_settings()["max_running_jobs"]
    return None if value is None else int(value)


def queued_ids() -> list[str]:
    """Queued jobs, oldest first."""
    try:
        with os.scandir(queue_dir()) as entries:
            return sorted(e.name for e in entries if stamp_of(e.name) is not None)
    except (FileNotFoundError, NotADirectoryError):
        return []


def ahead(job_id: str) -> int | None:
    """How many queued jobs start before this one; None if it is not queued."""
    ids = queued_ids()
    return ids.index(job_id) if job_id in ids else None


def is_queued(state: JobState) -> bool:
    return state.status == model.PENDING and state.queued


def mark_queued(job_id: str) -> None:
    folder = paths.ensure_private_dir(queue_dir(), "queue folder")
    os.close(paths.open_private(folder / job_id, os.O_WRONLY | os.O_CREAT))


def forget(job_id: str) -> None:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.remove(queue_dir() / job_id)


@contextlib.contextmanager
def queue_lock() -> Iterator[None]:
    paths.ensure_private_dir(paths.home(), "home")
    paths.ensure_private_dir(paths.jobs_dir(), "jobs folder")
    folder = paths.ensure_private_dir(queue_dir(), "queue folder")
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def running_ids(exclude: str | None = None) -> list[str]:
    """Jobs holding a slot: their lock is held and their state is pending, running or paused (and
    not queued). A locked folder whose state cannot be read counts (the safe side)."""
    root = paths.jobs_dir()
    out = []
    for name in sorted(folder_names()):
        if name == exclude or stamp_of(name) is None:
            continue
        folder = root / name
        if not is_locked(folder):
            continue
        try:
            head = read_head(folder)
        except (StateFileError, OSError):
            out.append(name)
            continue
        if head.active and not is_queued(head):
            out.append(name)
    return out


def must_wait(cap: int | None, exclude: str | None = None) -> bool:
    """Whether a new job has to queue (call holding `queue_lock`): the slots are full, or older
    jobs are waiting already (a new job never overtakes them)."""
    if cap is None:
        return False
    return bool(queued_ids()) or len(running_ids(exclude)) >= cap


STARTED, BUSY, GONE = "started", "busy", "gone"


def _start_one(job_id: str) -> str:
    """Take a queued job out of the queue and start its runner (holding `queue_lock`)."""
    folder = paths.job_dir(job_id)
    if not folder.is_dir():
        return GONE  # its `start` was killed before publishing it, or it was pruned
    lock = JobLock(folder)
    if not lock.try_acquire(attempts=50, interval=0.01):
        return BUSY  # a command holds it (a cancel): the next pass decides
    try:
        try:
            state = read_state(folder)
        except StateFileError:
            return GONE
        if not is_queued(state):
            return GONE  # cancelled while queued
        state.dequeue(iso_now())
        write_state(folder, state, durable=True)
        forget(job_id)
        from ktrdr_collect.jobs.actions import append_log
        from ktrdr_collect.jobs.launch import spawn_runner

        append_log(job_id, f"job {job_id}: a slot is free; starting")
        spawn_runner(job_id, lock)
    finally:
        lock.release()
    return STARTED


def dispatch(exclude: str | None = None) -> list[str]:
    """Start the oldest queued jobs while slots are free; the started ids. `exclude`: the job of
    the runner handing over (it is ending and holds no slot)."""
    if not queued_ids():
        return []
    cap = limit()
    started: list[str] = []
    with queue_lock():
        queue = queued_ids()
        running = len(running_ids(exclude)) if queue and cap is not None else 0
        for job_id in queue:
            if cap is not None and running >= cap:
                break
            outcome = _start_one(job_id)
            if outcome == GONE:
                forget(job_id)
            elif outcome == BUSY:
                break  # never overtake it; whoever holds it (a cancel) dispatches after
            else:
                started.append(job_id)
                running += 1
    return started


def recover() -> list[str]:
    """For every `collect` command: start queued jobs a dead runner did not hand over. Never fails
    the command (a broken config is reported by the command itself)."""
    global _last_nudge
    _last_nudge = time.monotonic()
    try:
        return dispatch()
    except Exception as e:  # noqa: BLE001 - the command itself must run
        log.debug("queue recovery skipped: %s", e)
        return []


def nudge() -> None:
    """`recover`, at most once every NUDGE_S in this process (for readers polling a queued job)."""
    if time.monotonic() - _last_nudge >= NUDGE_S:
        recover()


def handover(job_id: str) -> None:
    """The ending runner of `job_id` (its last state written) starts whoever's turn it is."""
    try:
        for started in dispatch(exclude=job_id):
            log.info("job %s: handed over to queued job %s", job_id, started)
    except Exception as e:  # noqa: BLE001 - the next `collect` command recovers the queue
        log.warning("job %s: could not start queued jobs (%s); the next `collect` command will", job_id, e)
