"""Every path the tool uses, in one place (CONTRACT.md "Where things live")."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from ktrdr_collect import files
from ktrdr_collect.errors import CollectError

APP_NAME = "ktrdr-collect"
HOME_ENV = "KTRDR_COLLECT_HOME"


class ForeignOwnerError(CollectError):
    """A folder of the tool's (home, jobs, a job, config) that belongs to another user: refused,
    because whoever owns a folder can rename, replace or write into what is inside it."""

    def __init__(self, path: Path, what: str, uid: int) -> None:
        super().__init__(
            f"{what} {path} belongs to another user (uid {uid}), not to you (uid {os.geteuid()}): "
            f"refusing to use it"
        )


def check_owned(path: Path, what: str) -> Path:
    """`path` if it is missing or ours (the name and, for a link, what it points to); else
    ForeignOwnerError. Missing is fine: we create it ourselves (ensure_private_dir)."""
    for follow in (False, True):
        try:
            st = os.stat(path, follow_symlinks=follow)
        except (FileNotFoundError, NotADirectoryError):
            return path
        if st.st_uid != os.geteuid():
            raise ForeignOwnerError(path, what, st.st_uid)
        if not stat.S_ISLNK(st.st_mode):
            break
    return path


def home() -> Path:
    """The tool's home: `$KTRDR_COLLECT_HOME`, else the platform's user data dir. A home that
    exists and belongs to another user is refused (ForeignOwnerError)."""
    override = os.environ.get(HOME_ENV)
    if override:
        return check_owned(Path(override).expanduser(), "home")
    from platformdirs import user_data_dir

    return check_owned(Path(user_data_dir(APP_NAME)), "home")


def config_path() -> Path:
    """The config file; its folder, when it exists, must be ours (ForeignOwnerError)."""
    override = os.environ.get(HOME_ENV)
    if override:
        return check_owned(Path(override).expanduser(), "home") / "config.toml"
    from platformdirs import user_config_dir

    return check_owned(Path(user_config_dir(APP_NAME)), "config folder") / "config.toml"


def jobs_dir() -> Path:
    return check_owned(home() / "jobs", "jobs folder")


def job_dir(job_id: str) -> Path:
    return jobs_dir() / job_id


def default_data_dir() -> Path:
    return home() / "data"


def shared_dir() -> Path:
    """Machine-wide state shared by every job (rate-limit buckets and the like)."""
    return home() / "shared"


def _make_parents(path: Path) -> None:
    """Missing folders above `path`: the home and those inside it 0700, those above it as usual."""
    if path.parent.is_dir():
        return
    top = home()
    private = path.parent == top or top in path.parent.parents
    _make_parents(path.parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path.parent, 0o700 if private else 0o777)


def ensure_private_dir(path: Path, what: str = "folder") -> Path:
    """Create `path` (and missing parents) for the owner only (0700). An existing folder is used as
    it is if it is ours — never chmod'ed, since we did not make it — and refused if it is not."""
    _make_parents(path)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        check_owned(path, what)
        if not path.is_dir():
            raise NotADirectoryError(f"{path} exists and is not a folder") from None
        return path
    if stat.S_IMODE(os.stat(path).st_mode) != 0o700:  # a umask like 0o277: ours, so ours to fix
        os.chmod(path, 0o700)
    return path


def open_private(path: Path, flags: int) -> int:
    """Open a job file (created owner-only, 0600), never through a symbolic link (files.open_nofollow)."""
    return files.open_nofollow(path, flags, files.PRIVATE_FILE_MODE)
