"""The control channel: a command is one JSON line `{"id", "cmd", ...}` appended to `control`; the
runner reads new lines every 50 ms, acts on each id once, and acknowledges it *by id* in
state.json (`control_acks`). A sender waits for its own id, never for a file position, so a
control file that is truncated, deleted, replaced or given a torn line loses nothing silently:
the runner notices (a new inode, a size below its offset, or bytes before its offset that
changed) and reads the file again from the start, skipping the ids it has seen; the sender puts
its line back if it is no longer in the file; and a command nobody acknowledges is reported as
such, never as done.

Only the job's owner commands it: a control file that is not a regular file of ours with mode
0600 is refused by the sender (an error) and ignored by the runner (a warning in the log).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktrdr_collect import paths
from ktrdr_collect.errors import CollectError
from ktrdr_collect.jobs.record import JobState

CONTROL_FILE = "control"
COMMANDS = ("pause", "resume", "cancel")
MAX_ACKS = 32
"""Acknowledgements kept in state.json (the newest), enough for any sender still waiting."""
TAIL_BYTES = 48
"""Bytes before the read offset remembered to notice a file rewritten in place."""


class ControlFileError(CollectError):
    """The control file cannot be used: not ours, not private, or not writable."""


@dataclass(frozen=True)
class Command:
    id: str
    cmd: str


def new_command_id() -> str:
    return secrets.token_hex(8)


def untrusted(st: os.stat_result) -> str | None:
    """Why a control file with this stat cannot carry our commands, or None if it can."""
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_uid != os.geteuid():
        return f"belongs to another user (uid {st.st_uid})"
    if st.st_mode & 0o077:
        return f"can be written by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _line(command: Command) -> bytes:
    """Led by a newline, so that a torn or garbage line before it can never swallow it."""
    body = json.dumps({"id": command.id, "cmd": command.cmd, "at": time.time(), "pid": os.getpid()})
    return f"\n{body}\n".encode()


def send(folder: Path, command: str, command_id: str | None = None) -> str:
    """Append a command and return its id (pass `command_id` to put a lost line back)."""
    if command not in COMMANDS:
        raise ValueError(command)
    path = folder / CONTROL_FILE
    entry = Command(command_id or new_command_id(), command)
    try:
        fd = paths.open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except OSError as e:
        raise ControlFileError(f"cannot open control file {path}: {e.strerror or e}") from None
    try:
        why = untrusted(os.fstat(fd))
        if why is not None:
            raise ControlFileError(f"control file {path} {why}: refusing to use it (delete it and retry)")
        _write_all(fd, _line(entry))
    except OSError as e:
        raise ControlFileError(f"cannot write control file {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    return entry.id


def holds(folder: Path, command_id: str) -> bool:
    """Whether the control file still has the command's line (whole: its id and a newline after)."""
    try:
        data = (folder / CONTROL_FILE).read_bytes()
    except OSError:
        return False
    at = data.find(f'"id": "{command_id}"'.encode())
    return at >= 0 and data.find(b"\n", at) >= 0


def find_ack(state: JobState, command_id: str) -> dict[str, Any] | None:
    for ack in state.control_acks:
        if ack.get("id") == command_id:
            return ack
    return None


def acked_ids(state: JobState) -> list[str]:
    return [a["id"] for a in state.control_acks if isinstance(a.get("id"), str)]


def add_ack(state: JobState, command: Command, result: str) -> None:
    state.control_acks = [*state.control_acks, {"id": command.id, "cmd": command.cmd, "result": result}][-MAX_ACKS:]


def skip_unread(folder: Path, state: JobState) -> None:
    """Mark every complete line in the control file as read (for a job restarted after its runner
    died: commands sent to the dead runner were reported unacknowledged, so they are void)."""
    try:
        data = (folder / CONTROL_FILE).read_bytes()
    except OSError:
        data = b""
    end = data.rfind(b"\n") + 1
    state.control_offset = end
    state.control_tail = data[max(0, end - TAIL_BYTES):end].decode("latin-1")


def parse(lines: Iterable[bytes]) -> list[Command]:
    """The well-formed commands among `lines`; anything else (a torn line, garbage) is skipped."""
    out = []
    for raw in lines:
        try:
            entry = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(entry, dict):
            continue
        cid, cmd = entry.get("id"), entry.get("cmd")
        if isinstance(cid, str) and cid and cmd in COMMANDS:
            out.append(Command(cid, cmd))
    return out


class ControlReader:
    """The runner's side: new commands since the last poll, each id once."""

    def __init__(self, folder: Path, offset: int = 0, tail: str = "", seen: Iterable[str] = (),
                 warn: Callable[[str], None] | None = None) -> None:
        self.path = folder / CONTROL_FILE
        self.offset = offset
        self.tail = tail.encode("latin-1")
        self.seen: set[str] = set(seen)
        self._ident: tuple[int, int] | None = None
        self._size_seen: tuple[int, int] | None = None
        self._warn = warn
        self._refused: str | None = None

    def poll(self) -> list[Command]:
        """Commands appended since the last poll (complete lines only), never one seen before."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            self._ident = None  # deleted: a new file will be read from its start
            self.offset, self.tail = 0, b""
            return []
        if not self._trusted(st):
            return []
        if (st.st_size, st.st_mtime_ns) == self._size_seen and (st.st_dev, st.st_ino) == self._ident:
            return []
        return self._read()

    def tail_text(self) -> str:
        return self.tail.decode("latin-1")

    # -- inside ----------------------------------------------------------------------------------
    def _trusted(self, st: os.stat_result) -> bool:
        why = untrusted(st)
        if why != self._refused and self._warn is not None:
            self._warn(f"control file {self.path} {why}: its commands are ignored" if why
                       else f"control file {self.path} is usable again")
        self._refused = why
        return why is None

    def _read(self) -> list[Command]:
        try:
            fd = paths.open_private(self.path, os.O_RDONLY)
        except OSError:
            return []
        try:
            st = os.fstat(fd)
            if not self._trusted(st):
                return []
            ident = (st.st_dev, st.st_ino)
            if ident != self._ident and self._ident is not None or not self._continues(fd, st.st_size):
                self.offset, self.tail = 0, b""  # replaced or rewritten: read it all again
            self._ident = ident
            self._size_seen = (st.st_size, st.st_mtime_ns)
            chunk = os.pread(fd, max(0, st.st_size - self.offset), self.offset)
            end = chunk.rfind(b"\n") + 1
            self.offset += end
            start = max(0, self.offset - TAIL_BYTES)
            self.tail = os.pread(fd, self.offset - start, start)
        finally:
            os.close(fd)
        return self._fresh(parse(chunk[:end].split(b"\n")))

    def _continues(self, fd: int, size: int) -> bool:
        """Whether the file still holds, just before our offset, the bytes we last read there."""
        if self.offset == 0:
            return True
        if size < self.offset or not self.tail:
            return False
        return os.pread(fd, len(self.tail), self.offset - len(self.tail)) == self.tail

    def _fresh(self, commands: list[Command]) -> list[Command]:
        out = []
        for command in commands:
            if command.id not in self.seen:
                self.seen.add(command.id)
                out.append(command)
        return out
