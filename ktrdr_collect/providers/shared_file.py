"""Small JSON files shared by every process on the machine (pacing logs, rate-limit windows),
read and rewritten under an exclusive flock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ktrdr_collect import paths


class SharedJson:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def load(self) -> Any:
        """The parsed content, or None if the file is empty or not JSON (a fresh start)."""
        raw = b""
        while chunk := os.pread(self.fd, 65536, len(raw)):
            raw += chunk
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def save(self, data: Any) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(data, sort_keys=True).encode(), 0)


@contextlib.contextmanager
def locked_json(path: Path) -> Iterator[SharedJson]:
    """Open (creating it owner-only) and lock `path` for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = paths.open_private(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield SharedJson(fd)
    finally:
        os.close(fd)
