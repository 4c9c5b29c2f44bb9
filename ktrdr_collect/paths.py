"""Every path the tool uses, in one place (CONTRACT.md "Where things live")."""

from __future__ import annotations

import os
from pathlib import Path

from ktrdr_collect import files

APP_NAME = "ktrdr-collect"
HOME_ENV = "KTRDR_COLLECT_HOME"


def home() -> Path:
    """The tool's home: `$KTRDR_COLLECT_HOME`, else the platform's user data dir."""
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME))


def config_path() -> Path:
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override).expanduser() / "config.toml"
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME)) / "config.toml"


def jobs_dir() -> Path:
    return home() / "jobs"


def job_dir(job_id: str) -> Path:
    return jobs_dir() / job_id


def default_data_dir() -> Path:
    return home() / "data"


def shared_dir() -> Path:
    """Machine-wide state shared by every job (rate-limit buckets and the like)."""
    return home() / "shared"


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) for the owner only (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def open_private(path: Path, flags: int) -> int:
    """Open a job file (created owner-only, 0600), never through a symbolic link (files.open_nofollow)."""
    return files.open_nofollow(path, flags, files.PRIVATE_FILE_MODE)
