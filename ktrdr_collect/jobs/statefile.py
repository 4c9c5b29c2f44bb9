"""state.json: versioned, written atomically, read without ever seeing a torn file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ktrdr_collect import files
from ktrdr_collect.errors import StateFileError
from ktrdr_collect.jobs.model import SCHEMA

STATE_FILE = "state.json"


def write_json_atomic(path: Path, data: dict[str, Any], durable: bool = False) -> None:
    """Readers see the old file or the new one; a full disk or a link at `path` leaves the old file
    untouched and raises OSError (files.atomic_write)."""
    payload = json.dumps(data, sort_keys=True, indent=1).encode()
    files.atomic_write(path, payload, mode=files.PRIVATE_FILE_MODE, durable=durable)


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
