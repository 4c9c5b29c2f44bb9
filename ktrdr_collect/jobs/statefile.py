"""state.json: versioned, written atomically, read without ever seeing a torn file.

The file is one JSON object: the job's status and bookkeeping (the *head*: sorted keys, one per
line) and then, last, `symbols`, one entry per line. That layout is what keeps a job of 100,000
symbols cheap (docs/reliability.md, "Huge jobs"):

- the runner keeps each symbol's line encoded (`encode_entry`) and re-encodes only the symbols
  that changed; a write joins the lines (`encode_state`) instead of encoding every symbol again;
- a reader that needs only the head — a command waiting for its acknowledgement, `wait` — reads
  the first few KiB (`read_head`), not the whole file.

Any JSON object with the right keys is still a valid state file (one written by an older version,
or by hand): `read_state` parses whatever it finds, and `read_head` falls back to it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktrdr_collect import files
from ktrdr_collect.errors import StateFileError
from ktrdr_collect.jobs.model import SCHEMA
from ktrdr_collect.jobs.record import JobState

STATE_FILE = "state.json"
SYMBOLS_KEY = b'\n "symbols": '
"""How `symbols` starts in a file written by `encode_state`: at the top level (one space), last."""
ENDINGS = (b"\n ]\n}\n", b"[]\n}\n")
"""How such a file ends: the symbols' list closes the object."""
HEAD_BYTES = 64 * 1024
"""Read at most this much for the head; a longer head (or another layout) reads the whole file."""


@dataclass(frozen=True)
class Encoded:
    """A state already encoded (the runner's, from its cached symbol lines): written as it is."""

    payload: bytes


def encode_entry(entry: Any) -> bytes:
    """One symbol's line: compact JSON with sorted keys."""
    return json.dumps(entry, sort_keys=True).encode()


def encode_state(head: dict[str, Any], entries: Sequence[bytes]) -> bytes:
    """The state file's bytes: `head` (without `symbols`), then `symbols` from encoded lines."""
    text = json.dumps(head, sort_keys=True, indent=1).encode()
    body = b"[\n  " + b",\n  ".join(entries) + b"\n ]" if entries else b"[]"
    opening = b"{" if text == b"{}" else text[:-2] + b","  # text ends with b"\n}"
    return b"".join((opening, SYMBOLS_KEY, body, b"\n}\n"))


def encode(data: dict[str, Any]) -> bytes:
    if not isinstance(data.get("symbols"), list):
        return json.dumps(data, sort_keys=True, indent=1).encode()
    head = {k: v for k, v in data.items() if k != "symbols"}
    return encode_state(head, [encode_entry(e) for e in data["symbols"]])


def write_json_atomic(path: Path, data: JobState | dict[str, Any] | Encoded, durable: bool = False) -> None:
    """Readers see the old file or the new one; a full disk or a link at `path` leaves the old file
    untouched and raises OSError (files.atomic_write)."""
    if isinstance(data, JobState):
        data = data.to_json()
    payload = data.payload if isinstance(data, Encoded) else encode(data)
    files.atomic_write(path, payload, mode=files.PRIVATE_FILE_MODE, durable=durable)


def _checked(folder: Path, path: Path, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("schema"), int):
        raise StateFileError(f"job {folder.name}: state file is corrupt ({path})")
    if data["schema"] > SCHEMA:
        raise StateFileError(
            f"job {folder.name}: state file has schema {data['schema']}, newer than this "
            f"version of collect understands ({SCHEMA}); upgrade ktrdr-collect"
        )
    return data


def read_state(folder: Path) -> JobState:
    """The job's state.json, typed (a missing, corrupt or too-new file raises StateFileError)."""
    return _typed(read_raw(folder))


def _typed(data: dict[str, Any]) -> JobState:
    return JobState.from_json(data)


def read_raw(folder: Path) -> dict[str, Any]:
    """state.json as the JSON object it holds (checked for a schema this version understands)."""
    path = folder / STATE_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise StateFileError(f"job {folder.name}: no state file") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise StateFileError(f"job {folder.name}: state file is corrupt ({path})") from None
    except OSError as e:
        raise StateFileError(f"job {folder.name}: cannot read state file: {e.strerror}") from None
    return _checked(folder, path, data)


def _head_bytes(path: Path) -> bytes | None:
    """The head of a file laid out by `encode_state`, as a JSON object; None for another layout."""
    with open(path, "rb") as f:  # one open file: its start and its end are of the same version
        start = f.read(HEAD_BYTES)
        at = start.find(SYMBOLS_KEY)
        if at <= 0 or start[at - 1:at] != b",":
            return None
        size = os.fstat(f.fileno()).st_size
        tail = os.pread(f.fileno(), 8, max(0, size - 8))
    if not tail.endswith(ENDINGS):
        return None
    return start[:at - 1] + b"\n}"


def read_head(folder: Path) -> JobState:
    """The state without `symbols` (empty, or all of them when the file has another layout): its
    first KiB when the file has the layout `encode_state` writes, else the whole file. For readers
    that poll."""
    return _typed(read_head_raw(folder))


def read_head_raw(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    try:
        head = _head_bytes(path)
    except OSError:
        head = None  # read_raw says what is wrong
    if head is None:
        return read_raw(folder)
    try:
        return _checked(folder, path, json.loads(head))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return read_raw(folder)


def write_state(folder: Path, data: JobState | dict[str, Any] | Encoded, durable: bool = False) -> None:
    write_json_atomic(folder / STATE_FILE, data, durable=durable)
