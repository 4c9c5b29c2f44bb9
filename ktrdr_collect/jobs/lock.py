"""The job lock: held (flock) by whichever process owns the job — its runner, or a command
acting on a job that has none. Liveness comes from the lock, never from pids.

The lock is taken on the job *folder* itself (a descriptor of the directory), not on a file in
it: a file can be deleted while its lock is held, after which a reader opening the name finds a
new, unlocked file and takes a live job for dead (and `resume` starts a second runner). The
folder cannot go while the job is in it, and a rename keeps the same directory (and its lock).
The `lock` file in the folder only records the holder's pid, for humans and `show`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from ktrdr_collect import paths

LOCK_FILE = "lock"
"""The holder's pid, for humans; liveness never reads it."""


def open_folder(folder: Path) -> int:
    """A read-only descriptor of the job folder, the thing that is locked."""
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


class JobLock:
    def __init__(self, folder: Path, fd: int | None = None) -> None:
        self.folder = folder
        self.fd = fd

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def try_acquire(self, attempts: int = 1, interval: float = 0.02) -> bool:
        """Take the lock without blocking (retrying briefly: readers hold it shared for an instant)."""
        try:
            fd = open_folder(self.folder)
        except (FileNotFoundError, NotADirectoryError):
            return False
        for i in range(attempts):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if i + 1 < attempts:
                    time.sleep(interval)
                continue
            self.fd = fd
            self.record_pid(os.getpid())
            return True
        os.close(fd)
        return False

    def moved_to(self, folder: Path) -> None:
        """The locked folder was renamed (a new job made visible): the lock went with it."""
        self.folder = folder

    def record_pid(self, pid: int) -> None:
        """For humans and `show`; liveness never trusts it, so failing to write it is no error."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            fd = paths.open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                os.write(fd, f"{pid}\n".encode())
            finally:
                os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def is_locked(folder: Path) -> bool:
    """True while some process holds the job's lock (its runner is alive)."""
    try:
        fd = open_folder(folder)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def holder_pid(folder: Path) -> int | None:
    try:
        return int((folder / LOCK_FILE).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None
