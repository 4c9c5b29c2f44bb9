"""The job lock: held (flock) by whichever process owns the job — its runner, or a command
acting on a job that has none. Liveness comes from the lock, never from pids."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from ktrdr_collect import paths

LOCK_FILE = "lock"


class JobLock:
    def __init__(self, folder: Path, fd: int | None = None) -> None:
        self.path = folder / LOCK_FILE
        self.fd = fd

    def try_acquire(self, attempts: int = 1, interval: float = 0.02) -> bool:
        """Take the lock without blocking (retrying briefly: readers hold it shared for an instant)."""
        fd = paths.open_private(self.path, os.O_RDWR | os.O_CREAT)
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

    def record_pid(self, pid: int) -> None:
        """For humans and `show`; liveness never trusts it."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{pid}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def is_locked(folder: Path) -> bool:
    """True while some process holds the job's lock (its runner is alive)."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
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
