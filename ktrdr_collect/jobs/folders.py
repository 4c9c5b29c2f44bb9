"""Job folders under <home>/jobs: ids, creation, lookup by reference, and the reader's view."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ktrdr_collect import paths
from ktrdr_collect.errors import AmbiguousJobError, JobNotFoundError, StateFileError
from ktrdr_collect.jobs import model
from ktrdr_collect.jobs.lock import is_locked
from ktrdr_collect.jobs.statefile import STATE_FILE, read_state

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
LOG_FILE = "log"


def _base36(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def new_job_id(now: float | None = None) -> str:
    """8 base-36 digits of milliseconds since the epoch, then 4 random: sortable, 13 characters."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{_base36(ms, 8)}-{''.join(secrets.choice(_ALPHABET) for _ in range(4))}"


def iso_now() -> str:
    return iso(time.time())


def iso(ts: float) -> str:
    """ISO 8601 UTC with milliseconds and a trailing Z."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def iso_seconds(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def folder_names() -> set[str]:
    """Names in the jobs folder that can be jobs (no state check: one listdir, however many jobs)."""
    try:
        with os.scandir(paths.jobs_dir()) as entries:
            return {e.name for e in entries if not e.name.startswith(".") and e.is_dir()}
    except FileNotFoundError:
        return set()


def has_state(job_id: str) -> bool:
    return os.path.exists(os.path.join(paths.jobs_dir(), job_id, STATE_FILE))


def job_ids() -> list[str]:
    """Every job folder with a state file, oldest first."""
    return sorted(name for name in folder_names() if has_state(name))


def create_folder(now: float | None = None) -> tuple[str, Path]:
    paths.ensure_private_dir(paths.home())
    paths.ensure_private_dir(paths.jobs_dir())
    for _ in range(20):
        job_id = new_job_id(now)
        folder = paths.job_dir(job_id)
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return job_id, folder
    raise RuntimeError("could not allocate a job id")


def resolve(ref: str) -> str:
    """A full id, a unique prefix of one, or `last` -> the job id."""
    ids = job_ids()
    if ref == "last":
        if not ids:
            raise JobNotFoundError(ref)
        return ids[-1]
    if ref in ids:
        return ref
    matches = [i for i in ids if i.startswith(ref)] if ref else []
    if not matches:
        raise JobNotFoundError(ref)
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (" ..." if len(matches) > 5 else "")
        raise AmbiguousJobError(f"Job reference '{ref}' is ambiguous: matches {shown}")
    return matches[0]


def reader_view(state: dict[str, Any], alive: bool) -> dict[str, Any]:
    """The status a reader reports: `interrupted` when the state is active but no runner lives."""
    view = dict(state)
    if view.get("status") in model.ACTIVE and not alive:
        view["status"] = model.INTERRUPTED
        view["current_symbols"] = []
        view["eta_s"] = None
    view["exit_code"] = model.exit_code(view["status"], int(view.get("symbols_failed") or 0))
    return view


def load_status(job_id: str) -> dict[str, Any]:
    folder = paths.job_dir(job_id)
    state = read_state(folder)
    if state.get("status") not in model.ACTIVE:
        return reader_view(state, alive=False)
    if is_locked(folder):
        return reader_view(state, alive=True)
    # The runner may have written its final state and exited between our two reads: read again.
    state = read_state(folder)
    return reader_view(state, alive=state.get("status") in model.ACTIVE and is_locked(folder))


def iter_statuses() -> Iterator[tuple[str, dict[str, Any] | StateFileError]]:
    """Every job's status, newest first; a broken state file yields its error instead."""
    for job_id in reversed(job_ids()):
        try:
            yield job_id, load_status(job_id)
        except StateFileError as e:
            yield job_id, e
