"""Creating a job and starting its runner process (the same for foreground and --detach)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ktrdr_collect import paths
from ktrdr_collect.jobs import queue
from ktrdr_collect.jobs.folders import (
    LOG_FILE,
    RUNNER_ERR,
    NewFolder,
    create_folder,
    iso,
    iso_seconds,
    publish_folder,
)
from ktrdr_collect.jobs.lock import JobLock
from ktrdr_collect.jobs.record import JobSpec, JobState, new_state
from ktrdr_collect.jobs.statefile import write_state

__all__ = ["LOG_FILE", "RUNNER_ERR", "JobRequest", "create_job", "spawn_runner", "write_job"]


@dataclass
class JobRequest:
    symbols: list[str]
    timeframe: str
    start: datetime | None  # None: earliest
    end: datetime
    provider: str
    options: dict[str, Any] = field(default_factory=dict)
    public_options: dict[str, Any] = field(default_factory=dict)
    earliest_ts: int = 0
    workers: int = 4
    data_dir: Path = Path()
    format: str = "csv"
    name: str | None = None
    synthetic: bool = False
    retry_of: str | None = None
    """`collect retry`: the job whose unfinished series this one collects again."""
    refresh: bool = False
    """`start --refresh`: fetch the window again where it is stored and replace those bars."""
    executor: str | None = None
    """`threads` or `dask://HOST:PORT`; None: config `executor` when the job (re)starts."""
    timeframes: tuple[str, ...] = ()
    """Every timeframe (`-t 1h -t 1d`); empty: `timeframe` alone."""


def job_spec(req: JobRequest) -> JobSpec:
    """The request as the job's fixed record (job.json)."""
    start_ts = req.start.timestamp() if req.start is not None else req.earliest_ts
    return JobSpec(
        symbols=tuple(req.symbols), timeframe=req.timeframe, start=iso_seconds(start_ts),
        end=iso_seconds(req.end.timestamp()), provider=req.provider, earliest=req.start is None,
        options=dict(req.public_options), data_dir=str(req.data_dir), format=req.format, workers=req.workers,
        name=req.name, synthetic=req.synthetic, retry_of=req.retry_of, refresh=req.refresh,
        executor=req.executor, timeframes=tuple(req.timeframes or (req.timeframe,)),
    )


def write_job(folder: Path, job_id: str, req: JobRequest, created: float | None = None, seq: int | None = None,
              queued: bool = False) -> JobState:
    """A new job's record in `folder`: job.json (the spec), then its first state.json."""
    spec = job_spec(req)
    state = new_state(job_id, spec, iso(time.time() if created is None else created), seq=seq, queued=queued)
    spec.write(folder)
    write_state(folder, state, durable=True)
    return state


def spawn_runner(job_id: str, lock: JobLock) -> subprocess.Popen[bytes]:
    """Start the runner in its own session, handing it the lock we hold (no unlocked gap)."""
    folder = paths.job_dir(job_id)
    assert lock.fd is not None
    env = {**os.environ, paths.HOME_ENV: str(paths.home().resolve())}
    err = paths.open_private(folder / RUNNER_ERR, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ktrdr_collect.jobs.runner", job_id, "--lock-fd", str(lock.fd)],
            pass_fds=(lock.fd,),
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            cwd="/",
        )
    finally:
        os.close(err)
    lock.record_pid(proc.pid)
    lock.release()  # the runner's copy of the descriptor keeps the lock held
    return proc


def create_job(req: JobRequest, now: float | None = None) -> str:
    """Make the job folder and its pending state, holding the lock throughout; start the runner.

    The folder is made hidden and renamed into place once state.json is in it, so a `start` killed
    half-way leaves no job without a state (only a hidden folder that retention removes). The id
    comes from the creation sequence (never back in time); created_at from the clock. With config
    `max_running_jobs` and no free slot, the job is queued (jobs.queue): no runner until its turn."""
    created = time.time() if now is None else now
    cap = queue.limit()
    if cap is None:  # no limit: no queue to consult
        return _create(req, created, None)
    with queue.queue_lock():  # deciding whether it runs or queues, and publishing it, is one step
        return _create(req, created, cap)


def _create(req: JobRequest, created: float, cap: int | None) -> str:
    new = create_folder(created)
    lock = JobLock(new.staging)
    queued = False
    try:
        if not lock.try_acquire():
            raise RuntimeError(f"job {new.job_id}: cannot lock a new job folder")
        queued = queue.must_wait(cap)
        if queued:
            queue.mark_queued(new.job_id)  # an entry whose folder never appears is dropped
        write_job(new.staging, new.job_id, req, created, seq=new.seq, queued=queued)
        lock.moved_to(publish_folder(new))
    except BaseException:
        lock.release()
        _discard(new)
        if queued:
            queue.forget(new.job_id)
        raise
    try:
        if not queued:
            spawn_runner(new.job_id, lock)
    finally:
        lock.release()
    return new.job_id


def _discard(new: NewFolder) -> None:
    shutil.rmtree(new.staging, ignore_errors=True)
