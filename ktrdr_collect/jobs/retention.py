"""Pruning finished jobs past retention. Running (or interrupted) jobs are never pruned."""

from __future__ import annotations

import shutil
import time

from ktrdr_collect import paths
from ktrdr_collect.jobs import model
from ktrdr_collect.jobs.folders import iso, load_status
from ktrdr_collect.jobs.history import History
from ktrdr_collect.jobs.lock import JobLock


def prune(older_than_s: float, dry_run: bool = False, now: float | None = None) -> list[str]:
    """Delete finished jobs that ended more than `older_than_s` ago; return their ids."""
    cutoff = iso((time.time() if now is None else now) - older_than_s)
    removed = []
    with History() as history:
        for job_id in history.expired(cutoff):
            if dry_run:
                removed.append(job_id)
                continue
            folder = paths.job_dir(job_id)
            lock = JobLock(folder)
            if not lock.try_acquire():
                continue  # someone is acting on it right now: leave it
            try:
                if load_status(job_id)["status"] not in model.FINISHED:
                    continue
                staging = folder.with_name(f".{job_id}.deleting")
                folder.rename(staging)  # readers stop seeing it at once
            finally:
                lock.release()
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(job_id)
        if removed and not dry_run:
            history.forget(removed)
    return removed


def auto_prune(retention_days: int) -> list[str]:
    """Best effort, after a `start`: never lets a pruning problem stop a collection."""
    if retention_days <= 0:
        return []
    try:
        return prune(retention_days * 86400.0)
    except Exception:
        return []
