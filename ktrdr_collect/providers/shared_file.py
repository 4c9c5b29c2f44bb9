"""Small JSON files shared by every process on the machine (pacing logs, rate-limit windows),
read and rewritten under an exclusive flock.

The lock is a file of its own (`<name>.lock`), so the data file can be replaced atomically
(files.atomic_write): a full disk leaves the previous content, never a torn file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ktrdr_collect import files, paths

LOCK_SUFFIX = ".lock"


class SharedJson:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Any:
        """The parsed content, or None if the file is missing, empty or not JSON (a fresh start)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            return None

    def save(self, data: Any) -> None:
        payload = json.dumps(data, sort_keys=True).encode()
        files.atomic_write(self.path, payload, mode=files.PRIVATE_FILE_MODE, durable=False)


def _area(path: Path) -> Path:
    """Where the tool's own folders start for `path`: the home if it is inside, else its folder."""
    home = paths.home()
    return home if path.is_relative_to(home) else path.parent


@contextlib.contextmanager
def locked_json(path: Path) -> Iterator[SharedJson]:
    """Lock `path` (creating its folder and lock file owner-only) for the duration of the block."""
    files.make_dirs(path.parent, files.PRIVATE_DIR_MODE, root=_area(path))
    fd = paths.open_private(path.with_name(path.name + LOCK_SUFFIX), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield SharedJson(path)
    finally:
        os.close(fd)
