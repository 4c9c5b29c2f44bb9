"""Job folders under <home>/jobs: ids, creation, lookup by reference, and the reader's view."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ktrdr_collect import paths
from ktrdr_collect.errors import AmbiguousJobError, JobNotFoundError, StateFileError
from ktrdr_collect.jobs import model
from ktrdr_collect.jobs.lock import is_locked
from ktrdr_collect.jobs.record import JobState
from ktrdr_collect.jobs.statefile import STATE_FILE, read_state

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
LOG_FILE = "log"
RUNNER_ERR = "runner.err"
SEQ_FILE = ".seq"
"""The last creation stamp handed out (jobs/.seq), read and written under a lock on jobs/."""
STAGING_SUFFIX = ".new"
"""A job folder is made as `.<id>.new` and renamed to `<id>` once its state.json is written."""
STOP_MARK = "ktrdr-collect: job stopped: "
"""How a runner marks, in runner.err, why it stopped when it could not say so in state.json."""
_ID_RE = re.compile(r"^([0-9a-z]{8})-[0-9a-z]{4}$")
CREATED_HERE: list[str] = []
"""Jobs this process created: stamped by the very clock retention is judging, so they never vouch
for it (jobs.retention)."""


def _base36(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def job_id_for(stamp: int) -> str:
    """8 base-36 digits of the creation stamp, then 4 random: sortable, 13 characters."""
    return f"{_base36(stamp, 8)}-{''.join(secrets.choice(_ALPHABET) for _ in range(4))}"


def new_job_id(now: float | None = None) -> str:
    """An id from the clock alone (milliseconds since the epoch); jobs get theirs from
    `create_folder`, which never goes back in time."""
    return job_id_for(int((time.time() if now is None else now) * 1000))


def stamp_of(job_id: str) -> int | None:
    """The creation stamp an id carries (None for a name that is not a job id)."""
    match = _ID_RE.match(job_id)
    return int(match.group(1), 36) if match else None


def next_stamp(last: int | None, now: float) -> int:
    """The clock in milliseconds, or one past the last stamp if the clock is not ahead of it: a
    creation sequence that never repeats or goes back, whatever the clock does."""
    ms = int(now * 1000)
    return ms if last is None or ms > last else last + 1


def iso_now() -> str:
    return iso(time.time())


def iso(ts: float) -> str:
    """ISO 8601 UTC with milliseconds and a trailing Z."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def iso_seconds(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def folder_names() -> set[str]:
    """Names in the jobs folder that can be jobs (no state check: one listdir, however many jobs).
    A name shaped like a job id is taken as a folder without a stat (at 100,000 jobs that halves
    the cost); any other name is one only if it is a directory."""
    root = paths.jobs_dir()
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return set()
    return {n for n in names if (len(n) == 13 and n[8] == "-" and n[0] != ".")
            or (not n.startswith(".") and os.path.isdir(os.path.join(root, n)))}


def has_state(job_id: str, root: Path | None = None) -> bool:
    return os.path.exists(os.path.join(root or paths.jobs_dir(), job_id, STATE_FILE))


def job_ids() -> list[str]:
    """Every job folder with a state file, oldest first (ids follow the creation sequence)."""
    root = paths.jobs_dir()
    return sorted(name for name in folder_names() if has_state(name, root))


def stateless_ids() -> list[str]:
    """Job folders without a state file: left by a `start` killed before it wrote one (by
    earlier versions; now a folder only appears with its state) or emptied by hand."""
    root = paths.jobs_dir()
    return sorted(n for n in folder_names() if stamp_of(n) is not None and not has_state(n, root))


def job_folder(job_id: str) -> Path:
    """The job's folder, refused (StateFileError) if it belongs to another user."""
    try:
        return paths.check_owned(paths.job_dir(job_id), "job folder")
    except paths.ForeignOwnerError as e:
        raise StateFileError(str(e)) from None


@dataclass(frozen=True)
class NewFolder:
    job_id: str
    seq: int
    staging: Path
    """Hidden (`.<id>.new`) until `publish_folder` renames it to the job id."""


@contextlib.contextmanager
def _jobs_lock(jobs: Path) -> Iterator[None]:
    fd = os.open(jobs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _last_stamp(jobs: Path) -> int | None:
    """jobs/.seq, or (missing or torn) the newest stamp among the job folders."""
    with contextlib.suppress(OSError, ValueError):
        return int((jobs / SEQ_FILE).read_text().strip())
    stamps = [s for s in map(stamp_of, folder_names()) if s is not None]
    return max(stamps, default=None)


def _save_stamp(jobs: Path, stamp: int) -> None:
    fd = paths.open_private(jobs / SEQ_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, f"{stamp}\n".encode())
    finally:
        os.close(fd)


def create_folder(now: float | None = None) -> NewFolder:
    """A new, hidden job folder with the next creation stamp (taken under a lock on jobs/)."""
    paths.ensure_private_dir(paths.home(), "home")
    jobs = paths.ensure_private_dir(paths.jobs_dir(), "jobs folder")
    with _jobs_lock(jobs):
        seq = next_stamp(_last_stamp(jobs), time.time() if now is None else now)
        for _ in range(20):
            job_id = job_id_for(seq)
            staging = jobs / f".{job_id}{STAGING_SUFFIX}"
            if (jobs / job_id).exists():
                continue
            try:
                os.mkdir(staging, 0o700)
            except FileExistsError:
                continue
            _save_stamp(jobs, seq)
            CREATED_HERE.append(job_id)
            return NewFolder(job_id, seq, staging)
    raise RuntimeError("could not allocate a job id")


def publish_folder(new: NewFolder) -> Path:
    """Make a new job visible, state and all, in one rename."""
    folder = paths.job_dir(new.job_id)
    os.rename(new.staging, folder)
    return folder


def resolve(ref: str) -> str:
    """A full id, a unique prefix of one, a unique job name, or `last` -> the job id. One listing
    of the jobs folder; state files are looked for only among the candidates (at 100,000 jobs,
    `last` checks one folder, not all of them)."""
    root = paths.jobs_dir()
    names = folder_names()
    if ref == "last":
        return newest_job(names, root)
    if ref in names and has_state(ref, root):
        return ref
    matches = sorted(n for n in names if n.startswith(ref) and has_state(n, root)) if ref else []
    if not matches:
        matches = named(ref)
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (" ..." if len(matches) > 5 else "")
            raise AmbiguousJobError(f"Job name '{ref}' is not unique: jobs {shown} have it (use an id)")
    if not matches:
        raise JobNotFoundError(ref)
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (" ..." if len(matches) > 5 else "")
        raise AmbiguousJobError(f"Job reference '{ref}' is ambiguous: matches {shown}")
    return matches[0]


def newest_job(names: set[str], root: Path) -> str:
    """The newest of `names` with a state file: the largest name, checked; sorting them all only
    if that one has no state (a start cut short), so `last` costs one pass, not a sort."""
    if names:
        newest = max(names)
        if has_state(newest, root):
            return newest
        for name in sorted(names, reverse=True):
            if has_state(name, root):
                return name
    raise JobNotFoundError("last")


RESTATED = ": restated "
"""How the pipeline logs a restatement (engine/restate.py): `NVDA: restated 1,024 bars after ...`."""


def restatements(job_id: str) -> list[str]:
    """The job's restatement lines from its log (what its summary repeats), without stamp and level."""
    try:
        text = (job_folder(job_id) / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line.split(None, 2)[2] for line in text.splitlines() if RESTATED in line and len(line.split(None, 2)) == 3]


def named(name: str) -> list[str]:
    """The jobs called `name` (`--name`), newest first: finished ones from the history index,
    running ones from their state."""
    if not name.strip():
        return []
    from ktrdr_collect.jobs.history import History

    with History() as history:
        return history.named(name)


def reader_view(state: JobState, alive: bool) -> JobState:
    """The status a reader reports: `interrupted` when the state is active but no runner lives,
    unless the job waits in the queue (jobs.queue): then `pending`, with `queue_ahead`."""
    position = None
    if state.status == model.PENDING and state.queued and not alive:
        from ktrdr_collect.jobs import queue

        position = queue.ahead(state.id)  # None: its queue entry is gone, it reads interrupted
    return state.view(alive, position)


def load_status(job_id: str) -> JobState:
    folder = job_folder(job_id)
    state = read_state(folder)
    if not state.active:
        return _with_stop_reason(folder, reader_view(state, alive=False))
    if is_locked(folder):
        return reader_view(state, alive=True)
    # The runner may have written its final state and exited between our two reads: read again.
    state = read_state(folder)
    alive = state.active and is_locked(folder)
    view = reader_view(state, alive=alive)
    if view.queue_ahead is not None:  # a reader polling a queued job recovers a stale queue
        from ktrdr_collect.jobs import queue

        queue.nudge()
    return _with_stop_reason(folder, view)


def _with_stop_reason(folder: Path, view: JobState) -> JobState:
    """An interrupted job whose runner could not record why in state.json (a full disk) shows the
    reason it left in runner.err instead, if that is newer than the state file."""
    if view.status == model.INTERRUPTED and not view.error:
        view.error = stop_reason(folder)
    return view


def stop_reason(folder: Path) -> str | None:
    try:
        err = folder / RUNNER_ERR
        if os.stat(err).st_mtime_ns < os.stat(folder / STATE_FILE).st_mtime_ns:
            return None
        with open(err, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    marked = [line[len(STOP_MARK):] for line in tail.splitlines() if line.startswith(STOP_MARK)]
    return marked[-1] if marked else None
