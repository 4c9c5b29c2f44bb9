"""Claims: two running jobs never fetch the same range of a series.

Before a job fetches a range of a series it *claims* it: a file in the series' claims folder
``<root>/<provider>/<timeframe>/.ktrdr/<FILE><tag>.claims/`` named after the range
(``<start>_<end>.<token>.claim``), holding the owner's label and kept under an exclusive flock
for as long as the claim lives. Once the range's bars are stored (and its coverage recorded) the
owner releases the claim: unlinks the file, then closes it. A job needing an overlapping range
waits until the claim is released, then reads coverage again and fetches only what is missing.

- A claim dies with its process: the OS drops the flock of a process that exits or is killed.
  A claim file whose flock anyone can take is dead; whoever sees one removes it.
- Claims are examined and taken under the folder's ``lock`` (a short flock, never held across a
  provider request or a store write; it is not the store's write lock).
- A claim file is created, flocked and written under that lock too, and claims are only ever
  judged under it: nobody sees a claim file that is not yet held.
- Readers look at the claims first and at coverage second, and an owner records coverage before
  it releases: a reader sees either the claim or the stored range, never neither.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ktrdr_collect import files
from ktrdr_collect.storage.gaps import Interval, subtract
from ktrdr_collect.text import clean

CLAIMS_SUFFIX = ".claims"
LOCK_NAME = "lock"
CLAIM_RE = re.compile(r"^(-?\d+)_(-?\d+)\.[0-9a-f]+\.claim$")
MAX_OWNER_CHARS = 64


def default_owner() -> str:
    """The label of this process's claims when the caller gives none."""
    return f"pid {os.getpid()}"


def claims_folder(lock_path: Path) -> Path:
    """``.ktrdr/AAPL.lock`` -> ``.ktrdr/AAPL.claims`` (``AAPL.parquet.lock`` -> ``AAPL.parquet.claims``)."""
    return lock_path.with_name(lock_path.name.removesuffix(".lock") + CLAIMS_SUFFIX)


def _try_flock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@dataclass(frozen=True)
class Claim:
    """A live claim of another holder, as seen under the folder's lock."""

    start: int
    end: int
    path: Path

    def overlaps(self, ranges: Sequence[Interval]) -> bool:
        return any(lo < self.end and self.start < hi for lo, hi in ranges)

    def owner(self) -> str:
        """The holder's label, safe to show (or ``another job`` when the file is gone or unreadable):
        anyone who can write the data dir can write a claim file."""
        try:
            doc = json.loads(self.path.read_bytes())
            return clean(str(doc["owner"])[:MAX_OWNER_CHARS]) or "another job"
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return "another job"

    @contextlib.contextmanager
    def watch(self) -> Iterator[ClaimWatch]:
        """Something to poll until the claim is released (see ClaimWatch)."""
        watch = ClaimWatch(self.path)
        try:
            yield watch
        finally:
            watch.close()


class ClaimWatch:
    """Polls one claim: released once its file is gone or its flock can be taken."""

    def __init__(self, path: Path) -> None:
        self.fd: int | None = None
        with contextlib.suppress(FileNotFoundError):
            self.fd = files.open_nofollow(path, os.O_RDONLY)

    def released(self) -> bool:
        if self.fd is None:
            return True
        if _try_flock(self.fd, fcntl.LOCK_SH):
            self.close()
            return True
        return False

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


@dataclass
class _Held:
    start: int
    end: int
    path: Path
    fd: int


class SeriesClaims:
    """One holder's claims on one series (a pipeline's), and its view of everyone else's."""

    def __init__(self, folder: Path, root: Path, owner: str) -> None:
        self.folder = folder
        self.root = root
        self.owner = owner[:MAX_OWNER_CHARS]
        self._held: dict[Path, _Held] = {}
        self._mutex = threading.Lock()
        self._lock_fd: int | None = None
        """The folder's lock file, kept open while the holder uses it (one holder, one thread)."""

    @property
    def held(self) -> list[Interval]:
        with self._mutex:
            return sorted((h.start, h.end) for h in self._held.values())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The folder's lock: hold it to look at claims and take some (briefly)."""
        if self._lock_fd is None:
            files.make_dirs(self.folder, files.DATA_DIR_MODE, root=self.root)
            self._lock_fd = files.open_nofollow(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, files.DATA_FILE_MODE)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def others(self) -> list[Claim]:
        """Live claims of other holders, ascending; dead ones (their process gone) are removed.
        Call under `locked()`."""
        with self._mutex:
            mine = set(self._held)
        found: list[Claim] = []
        for entry in os.scandir(self.folder):
            path = Path(entry.path)
            if path in mine:
                continue
            match = CLAIM_RE.match(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):  # a link is no claim of ours
                continue
            if self._remove_if_dead(path):
                continue
            found.append(Claim(int(match[1]), int(match[2]), path))
        return sorted(found, key=lambda c: (c.start, c.end))

    @staticmethod
    def _remove_if_dead(path: Path) -> bool:
        """True if nobody holds the claim at `path` (it is then removed)."""
        try:
            fd = files.open_nofollow(path, os.O_RDONLY)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # not ours to judge (a link, a folder): ignored, never followed
        try:
            if not _try_flock(fd, fcntl.LOCK_SH):
                return False
            files.remove_quietly(path)
            return True
        finally:
            os.close(fd)

    def take(self, ranges: Sequence[Interval]) -> None:
        """Claim each of `ranges` (call under `locked()`, after checking `others()`). A range that
        continues one already held extends that claim (its file renamed): a batch of consecutive
        segments is one claim, not one file per segment for every other job to look at."""
        for start, end in ranges:
            with self._mutex:
                before = next((h for h in self._held.values() if h.end == start), None)
            if before is not None:
                self._rename(before, before.start, end)
            else:
                self._take_one(start, end)

    def _take_one(self, start: int, end: int) -> None:
        path = self._name(start, end)
        fd = files.open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, files.DATA_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            doc = {"owner": self.owner, "pid": os.getpid()}
            files.write_all(fd, (json.dumps(doc) + "\n").encode())
        except BaseException:
            files.remove_quietly(path)
            os.close(fd)
            raise
        with self._mutex:
            self._held[path] = _Held(start, end, path, fd)

    def _name(self, start: int, end: int) -> Path:
        return self.folder / f"{start}_{end}.{secrets.token_hex(6)}.claim"

    def _rename(self, held: _Held, start: int, end: int) -> None:
        """The claim `held` now covers ``[start, end)`` (same file, same lock; under `locked()`)."""
        path = self._name(start, end)
        os.rename(held.path, path)
        with self._mutex:
            del self._held[held.path]
            held.start, held.end, held.path = start, end, path
            self._held[path] = held

    def release(self, start: int, end: int) -> None:
        """Release what is held inside ``[start, end)`` (after its bars are stored): claims inside
        it go; one reaching beyond it shrinks to the rest (under the folder lock, taken here)."""
        with self._mutex:
            hit = [h for h in self._held.values() if h.start < end and start < h.end]
            gone = [h for h in hit if start <= h.start and h.end <= end]
            for h in gone:
                del self._held[h.path]
        for h in gone:
            _drop(h)
        shrunk = [h for h in hit if h not in gone]
        if not shrunk:
            return
        with self.locked():
            for h in shrunk:
                first, *more = subtract((h.start, h.end), [(start, end)])
                self._rename(h, *first)
                for part in more:
                    self._take_one(*part)

    def release_all(self) -> None:
        """Release every claim held, and close the folder's lock file (reopened if used again)."""
        with self._mutex:
            done = list(self._held.values())
            self._held.clear()
        for h in done:
            _drop(h)
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)


def _drop(held: _Held) -> None:
    """Unlink, then close: a reader that opened the file just before sees it released."""
    try:
        files.remove_quietly(held.path)
    finally:
        os.close(held.fd)


class ClaimBook:
    """Makes the claims of one owner (a job) for the series of any store that has lock files."""

    def __init__(self, owner: str | None = None) -> None:
        self.owner = owner or default_owner()

    def series(self, store: object, provider: str, timeframe: str, symbol: str) -> SeriesClaims | None:
        """The claims of one series, or None for a store without lock files (no claims there)."""
        lock_path = getattr(store, "lock_path", None)
        root = getattr(store, "root", None)
        if lock_path is None or root is None:
            return None
        return SeriesClaims(claims_folder(Path(lock_path(provider, timeframe, symbol))), Path(root), self.owner)
