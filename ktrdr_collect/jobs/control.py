"""The control channel: commands append one JSON line to `control`; the runner reads new
lines from the offset it has reached and acknowledges by publishing that offset in state.json."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ktrdr_collect import paths

CONTROL_FILE = "control"
COMMANDS = ("pause", "resume", "cancel")


def send(folder: Path, command: str) -> int:
    """Append a command; return the offset just past it (the runner has acted once it reaches it)."""
    if command not in COMMANDS:
        raise ValueError(command)
    line = json.dumps({"cmd": command, "at": time.time(), "pid": os.getpid()}) + "\n"
    fd = paths.open_private(folder / CONTROL_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, line.encode())
        return os.lseek(fd, 0, os.SEEK_CUR)
    finally:
        os.close(fd)


class ControlReader:
    def __init__(self, folder: Path, offset: int = 0) -> None:
        self.path = folder / CONTROL_FILE
        self.offset = offset

    def poll(self) -> list[str]:
        """Commands appended since the last poll (complete lines only)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size <= self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        commands = []
        for raw in chunk[:end].splitlines():
            try:
                cmd = json.loads(raw).get("cmd")
            except (ValueError, AttributeError):
                continue
            if cmd in COMMANDS:
                commands.append(cmd)
        return commands
