"""Every file the tool writes goes through here: one way to do each file operation.

- `atomic_write` replaces a file's content so that a reader, a crash or a full disk leaves the old
  content or the new, never a mix: a temp file with a random name, opened exclusively and without
  following links, every byte written and checked, fsynced, then renamed over the old file. On any
  error the temp file is removed, the old file is untouched and the OSError propagates.
  Its content may be given in parts, some of them spans of another open file, which the kernel
  copies (`FileSpan`): a large file rewritten around a small change never passes through memory.
- `open_nofollow` opens (or creates) a file without following a symbolic link at its name.
- `make_dirs` creates the tool's folders, refusing a symbolic link anywhere below the area's root.

Modes are upper bounds: a new file or folder gets `mode` narrowed by the umask, so a umask of 000
never widens it (data 0644/0755, private 0600/0700) and a stricter umask is still honoured.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ktrdr_collect.errors import CollectError

DATA_FILE_MODE = 0o644
DATA_DIR_MODE = 0o755
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
TMP_SUFFIX = ".tmp"
_TMP_ATTEMPTS = 16


class UnsafePathError(CollectError, OSError):
    """A symbolic link (or something else that is not ours to write) where the tool writes a file or
    a folder: refused, never followed. An OSError (a store write fails its symbol with it) and a
    CollectError (a command prints it as one `Error:` line)."""

    def __init__(self, path: str | os.PathLike[str], what: str = "a symbolic link") -> None:
        message = f"refusing to write through {what}: {os.fspath(path)}"
        OSError.__init__(self, errno.ELOOP, message)
        self.filename = os.fspath(path)
        self.what = what

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[type[UnsafePathError], tuple[str, str]]:  # pickled across processes intact
        return UnsafePathError, (self.filename, self.what)


# --- small pieces --------------------------------------------------------------------------------


def write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    """Write every byte of `data` (at `offset`, else at the descriptor's position); a short write is
    continued, never ignored, and a write that cannot go on raises OSError (ENOSPC, EFBIG...)."""
    view = memoryview(data)
    while view:
        if offset is None:
            written = os.write(fd, view)
        else:
            written = os.pwrite(fd, view, offset)
            offset += written
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


@dataclass(frozen=True)
class FileSpan:
    """``length`` bytes of the open file ``fd`` from ``offset``: a part of a new file's content that
    is copied file to file (``copy_file_range``), never read into memory."""

    fd: int
    offset: int
    length: int


Content = bytes | bytearray | memoryview | Sequence["bytes | FileSpan"]
_COPY_CHUNK = 1 << 20


def write_content(fd: int, data: Content) -> None:
    """Write `data` (bytes, or parts: bytes and FileSpans in order) at the descriptor's position."""
    if isinstance(data, bytes | bytearray | memoryview):
        write_all(fd, data)
        return
    for part in data:
        if isinstance(part, FileSpan):
            copy_span(part, fd)
        else:
            write_all(fd, part)


def copy_span(span: FileSpan, out: int) -> None:
    """Copy `span` to `out` at its position: by the kernel where it can, else 1 MiB at a time. A
    source that ends early raises OSError rather than leaving a short copy."""
    offset, left = span.offset, span.length
    kernel = hasattr(os, "copy_file_range")
    while left > 0:
        if kernel:
            try:
                n = os.copy_file_range(span.fd, out, left, offset)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                kernel = False
                continue
        else:
            chunk = os.pread(span.fd, min(left, _COPY_CHUNK), offset)
            write_all(out, chunk)
            n = len(chunk)
        if n <= 0:
            raise OSError(errno.EIO, "the file being copied ended early")
        offset += n
        left -= n


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_symlink(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def refuse_symlink(path: Path) -> None:
    if is_symlink(path):
        raise UnsafePathError(path)


def is_temp_name(name: str) -> bool:
    """A temp file of `atomic_write` / `write_temp` (left behind only by a killed process)."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _with_filename(e: OSError, path: Path) -> OSError:
    """The same error naming the file it is about (os.write errors name none)."""
    if e.filename is not None or isinstance(e, UnsafePathError):
        return e
    return OSError(e.errno, e.strerror, os.fspath(path))


# --- opening -------------------------------------------------------------------------------------


def _refusal(path: Path, e: OSError) -> OSError:
    """ELOOP from O_NOFOLLOW means a link at the name: say so; other errors stay as they are."""
    if e.errno in (errno.ELOOP, errno.EMLINK) and is_symlink(path):
        return UnsafePathError(path)
    return e


def open_nofollow(path: Path, flags: int, mode: int = PRIVATE_FILE_MODE) -> int:
    """os.open that never follows a symbolic link at `path` and only opens a regular file. A file
    it creates gets `mode` narrowed by the umask (never wider); an existing file keeps its mode."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)  # NONBLOCK: a FIFO cannot hang us
    except OSError as e:
        raise _refusal(Path(path), e) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(path, "something that is not a regular file")
        if not flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


# --- atomic replacement --------------------------------------------------------------------------


def _create_temp(path: Path, mode: int) -> tuple[Path, int]:
    """A new file next to `path` with an unguessable name, created exclusively (never through a link)."""
    for _ in range(_TMP_ATTEMPTS):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}{TMP_SUFFIX}")
        try:
            return tmp, open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temp file name", os.fspath(path.parent))


def write_temp(path: Path, data: Content, *, mode: int, durable: bool) -> Path:
    """`data` in a new hidden temp file beside `path` (fsynced if `durable`); the caller renames it.
    On any error nothing is left behind."""
    tmp, fd = _create_temp(path, mode)
    try:
        try:
            write_content(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        remove_quietly(tmp)
        raise _with_filename(e, path) from None
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def atomic_write(path: Path, data: Content, *, mode: int, durable: bool) -> None:
    """Replace `path` with `data`: readers and crashes see the old content or the new. A symbolic
    link at `path` is refused (UnsafePathError). `durable` also fsyncs the file and its folder, so
    the new content survives a power loss; without it a crash may leave the old content."""
    path = Path(path)
    refuse_symlink(path)
    tmp = write_temp(path, data, mode=mode, durable=durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


# --- folders -------------------------------------------------------------------------------------


def _make_followed(path: Path, mode: int) -> None:
    """Create `path` and its missing parents (each with `mode`), following links: the user's part."""
    missing: list[Path] = []
    current = path
    while not os.path.isdir(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, mode)
    if not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", os.fspath(path))


def _make_own(folder: Path, mode: int) -> None:
    """Create `folder` (one level) or accept an existing real directory; refuse a link or a file."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, mode)
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(folder)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", os.fspath(folder))


def make_dirs(path: Path, mode: int, root: Path | None = None) -> Path:
    """Create `path` and every missing folder above it, each with `mode` (narrowed by the umask).

    `root` is where the tool's own area starts (a data dir, the home): it and the folders above it
    are the user's choice and may be links; every folder below it, down to `path`, must be a real
    directory, and a symbolic link there is refused with UnsafePathError. Default: `path`'s parent."""
    path = Path(path)
    root = path.parent if root is None else Path(root)
    try:
        below = path.relative_to(root).parts
    except ValueError:
        raise ValueError(f"{path} is not inside {root}") from None
    _make_followed(root, mode)
    current = root
    for part in below:
        current = current / part
        _make_own(current, mode)
    return path
