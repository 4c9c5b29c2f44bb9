"""state.json: versioned, written atomically, read without ever seeing a torn file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ktrdr_collect import paths
from ktrdr_collect.errors import StateFileError
from ktrdr_collect.jobs.model import SCHEMA

STATE_FILE = "state.json"


def write_json_atomic(path: Path, data: dict[str, Any], durable: bool = False) -> None:
    """Temp file in the same folder, then os.replace: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = json.dumps(data, sort_keys=True, indent=1).encode()
    fd = paths.open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, payload)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise StateFileError(f"job {folder.name}: no state file") from None
    except (ValueError, UnicodeDecodeError):
        raise StateFileError(f"job {folder.name}: state file is corrupt ({path})") from None
    except OSError as e:
        raise StateFileError(f"job {folder.name}: cannot read state file: {e.strerror}") from None
    if not isinstance(data, dict) or not isinstance(data.get("schema"), int):
        raise StateFileError(f"job {folder.name}: state file is corrupt ({path})")
    if data["schema"] > SCHEMA:
        raise StateFileError(
            f"job {folder.name}: state file has schema {data['schema']}, newer than this "
            f"version of collect understands ({SCHEMA}); upgrade ktrdr-collect"
        )
    return data


def write_state(folder: Path, data: dict[str, Any], durable: bool = False) -> None:
    write_json_atomic(folder / STATE_FILE, data, durable=durable)
