"""Pruning finished jobs past retention. Running (or interrupted) jobs are never pruned.

Age is measured against the jobs' own records, not against the clock alone, so that a clock
stepped backwards or far forwards cannot empty the history:

- The reference time is the clock, but never later than the newest time the job records vouch
  for (`history_clock`): the clock may be wrong, the records were written when it was right.
- The newest record (in creation order: job ids follow the creation sequence) vouches only if it
  is within MAX_TRUSTED_LEAP_S of the records before it; one job stamped by a clock far ahead
  cannot make every earlier job look old. A later job that agrees with it confirms it.
- The job a `start` has just created is no evidence at all for the pruning that follows it (its
  stamps come from the very clock being judged): `collect start` under a clock a year ahead
  prunes nothing.
- A job's age is taken from the newest record of it and of every job created before it, so a job
  stamped by a clock that had gone back does not look older than the jobs before it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ktrdr_collect import paths
from ktrdr_collect.jobs.folders import CREATED_HERE, STAGING_SUFFIX, load_status, stateless_ids
from ktrdr_collect.jobs.history import History
from ktrdr_collect.jobs.lock import JobLock

MAX_TRUSTED_LEAP_S = 30 * 86400.0
"""How far the newest job record may run ahead of all earlier ones and still vouch for the time."""
STALE_STAGING_S = 600.0
"""A hidden new-job folder this old (and unlocked) was left by a `start` that was killed."""
DELETING_SUFFIX = ".deleting"


@dataclass(frozen=True)
class Record:
    job_id: str
    at: float
    """The newest time the job's own state recorded (epoch seconds)."""
    finished: bool = True


def history_clock(records: Iterable[Record], max_leap_s: float = MAX_TRUSTED_LEAP_S) -> float | None:
    """The latest time the records vouch for; None without records."""
    ordered = sorted(records, key=lambda r: r.job_id)
    if not ordered:
        return None
    *earlier, newest = ordered
    before = max((r.at for r in earlier), default=None)
    if before is None:
        return newest.at
    if newest.at - before <= max_leap_s:
        return max(newest.at, before)
    return before


def reference_time(now: float, records: Iterable[Record]) -> float:
    """The clock, never ahead of what the records vouch for."""
    vouched = history_clock(records)
    return now if vouched is None else min(now, vouched)


def effective_ages(records: Iterable[Record]) -> dict[str, float]:
    """Each job's time as the newest record of it and of every job created before it."""
    out: dict[str, float] = {}
    newest = float("-inf")
    for r in sorted(records, key=lambda r: r.job_id):
        newest = max(newest, r.at)
        out[r.job_id] = newest
    return out


def expired(records: Collection[Record], older_than_s: float, now: float) -> tuple[list[str], float]:
    """The finished jobs past `older_than_s`, and the cutoff used (epoch seconds)."""
    cutoff = reference_time(now, records) - older_than_s
    times = effective_ages(records)
    return sorted(r.job_id for r in records if r.finished and times[r.job_id] < cutoff), cutoff


def _epoch(text: object) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None  # a hand-edited time: that job is no evidence, and is not pruned by age


def _records(history: History, exclude: Collection[str]) -> list[Record]:
    out = []
    for job_id, at, finished in history.records():
        when = _epoch(at)
        if job_id not in exclude and when is not None:
            out.append(Record(job_id, when, finished))
    return out


def _remove(folder: Path, job_id: str, check_finished: bool) -> bool:
    """Delete a job folder under its lock (renamed first, so readers stop seeing it at once)."""
    lock = JobLock(folder)
    if not lock.try_acquire():
        return False  # someone is acting on it right now: leave it
    try:
        if check_finished and not load_status(job_id).finished:
            return False
        if not check_finished and (folder / "state.json").exists():
            return False  # its state appeared meanwhile: a job after all
        staging = folder.with_name(f".{job_id}{DELETING_SUFFIX}")
        folder.rename(staging)
    finally:
        lock.release()
    shutil.rmtree(staging, ignore_errors=True)
    return True


def _stateless_expired(cutoff: float) -> list[str]:
    """Folders without a state file whose last change is past the cutoff."""
    out = []
    for job_id in stateless_ids():
        try:
            if os.stat(paths.job_dir(job_id)).st_mtime < cutoff:
                out.append(job_id)
        except OSError:
            continue
    return out


def _sweep_leftovers(now: float) -> None:
    """Hidden folders left by a killed `start` (new job) or a killed prune (deleting job)."""
    try:
        entries = list(os.scandir(paths.jobs_dir()))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        stale_new = name.endswith(STAGING_SUFFIX) and _older(entry, now - STALE_STAGING_S)
        if name.startswith(".") and entry.is_dir(follow_symlinks=False) and (
                stale_new or name.endswith(DELETING_SUFFIX)):
            lock = JobLock(Path(entry.path))
            if lock.try_acquire():
                lock.release()
                shutil.rmtree(entry.path, ignore_errors=True)


def _older(entry: os.DirEntry[str], cutoff: float) -> bool:
    try:
        return entry.stat(follow_symlinks=False).st_mtime < cutoff
    except OSError:
        return False


def prune(older_than_s: float, dry_run: bool = False, now: float | None = None,
          exclude: Collection[str] = ()) -> list[str]:
    """Delete finished jobs that ended more than `older_than_s` ago (by the records, see above),
    and job folders without a state that are as old; return their ids. `exclude`: jobs that are
    no evidence and never pruned."""
    wall = time.time() if now is None else now
    skip = set(exclude)
    removed = []
    with History() as history:
        doomed, cutoff = expired(_records(history, skip), older_than_s, wall)
        for job_id in doomed:
            if dry_run or _remove(paths.job_dir(job_id), job_id, check_finished=True):
                removed.append(job_id)
        for job_id in _stateless_expired(cutoff):
            if dry_run or _remove(paths.job_dir(job_id), job_id, check_finished=False):
                removed.append(job_id)
        if removed and not dry_run:
            history.forget(removed)
    if not dry_run:
        _sweep_leftovers(wall)
    return removed


def auto_prune(retention_days: int, now: float | None = None) -> list[str]:
    """Best effort, after a `start`: never lets a pruning problem stop a collection. The job that
    `start` created is left out of the evidence (see above)."""
    if retention_days <= 0:
        return []
    try:
        return prune(retention_days * 86400.0, now=now, exclude=CREATED_HERE[-1:])
    except Exception:
        return []
