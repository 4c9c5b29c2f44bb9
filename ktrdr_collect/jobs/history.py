"""The history index: finished jobs in SQLite so `list` and `stats` need not open every folder.

The job folders are the truth; the index is a cache of their finished (immutable) states. Each
read syncs it: folders it has not seen are read once, rows whose folder is gone are dropped, and a
missing or corrupt index is rebuilt from the folders.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ktrdr_collect import paths
from ktrdr_collect.errors import StateFileError
from ktrdr_collect.jobs.folders import folder_names, has_state, load_status, stamp_of
from ktrdr_collect.jobs.lock import is_locked
from ktrdr_collect.jobs.record import JobState

INDEX_FILE = "index.sqlite"
INDEX_VERSION = 3
SYNC_BATCH = 500
"""Finished jobs indexed per transaction while syncing: what a rebuild holds in memory at once."""

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, provider TEXT NOT NULL,
    created_at TEXT NOT NULL, completed_at TEXT, elapsed_s REAL, symbols_completed INTEGER,
    symbols_failed INTEGER, candles INTEGER, requests INTEGER, summary TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_completed ON jobs (completed_at);
CREATE TABLE IF NOT EXISTS job_symbols (job_id TEXT NOT NULL, symbol TEXT NOT NULL, error TEXT);
CREATE INDEX IF NOT EXISTS job_symbols_symbol ON job_symbols (symbol);
CREATE INDEX IF NOT EXISTS job_symbols_job ON job_symbols (job_id);
"""


def _newest_first(s: JobState) -> tuple[int, ...]:
    return tuple(-ord(c) for c in s.id)


def index_path() -> Path:
    return paths.jobs_dir() / INDEX_FILE


def _connect(path: Path | str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, INDEX_VERSION):
        raise sqlite3.DatabaseError(f"index version {version}")
    conn.executescript(SCHEMA_SQL)
    conn.execute(f"PRAGMA user_version = {INDEX_VERSION}")
    return conn


def _open_checked(path: Path | str) -> sqlite3.Connection:
    conn = _connect(path)
    try:
        conn.execute("SELECT count(*) FROM jobs").fetchone()
    except sqlite3.DatabaseError:
        conn.close()
        raise
    return conn


def _remove_index(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")


_warned_unusable = False


def _warn_unusable(path: Path, error: Exception) -> None:
    """One line on stderr, once per process: the history still works, only slower."""
    global _warned_unusable
    if not _warned_unusable:
        _warned_unusable = True
        reason = getattr(error, "strerror", None) or error
        print(f"Warning: job history index {path} is unusable ({reason}); reading the job folders instead",
              file=sys.stderr)


def open_index() -> sqlite3.Connection:
    """The index; a corrupt or foreign one is rebuilt (it is only a cache). When it cannot be
    (the path is a directory, or not writable), an in-memory index is built from the job folders."""
    path = index_path()
    paths.ensure_private_dir(path.parent)
    try:
        return _open_checked(path)
    except sqlite3.DatabaseError:
        pass
    try:
        _remove_index(path)
        return _open_checked(path)
    except (OSError, sqlite3.DatabaseError) as e:
        _warn_unusable(path, e)
        return _connect(":memory:")


def _insert(conn: sqlite3.Connection, status: JobState) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (status.id, status.name, status.status, status.provider, status.created_at, status.completed_at,
         status.elapsed_s, status.symbols_completed, status.symbols_failed, status.candles, status.requests,
         json.dumps(status.summary())),
    )
    conn.execute("DELETE FROM job_symbols WHERE job_id = ?", (status.id,))
    conn.executemany(
        "INSERT INTO job_symbols VALUES (?,?,?)", [(status.id, e.symbol, e.error) for e in status.symbols],
    )


class FinishedRow(NamedTuple):
    """What `stats` needs of a finished job, straight from the index's columns."""

    provider: str
    status: str
    elapsed_s: float | None
    symbols_completed: int | None
    symbols_failed: int | None
    candles: int | None
    requests: int | None


class History:
    """Finished jobs from the index, plus the live ones (and broken ones) read from their folders."""

    def __init__(self) -> None:
        self.conn = open_index()
        self.live: list[JobState] = []
        self.stateless: list[JobState] = []
        """Folders whose `start` was cut short before the state was written: listed as failed."""
        self.broken: list[StateFileError] = []
        self.sync()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sync(self) -> None:
        """Index the folders it has not seen, SYNC_BATCH at a time (each batch one transaction:
        a rebuild at 100,000 jobs holds one batch of states in memory, not all of them), and drop
        rows whose folder is gone."""
        on_disk = folder_names()  # indexed jobs are finished: their state files never change
        joined = self.conn.execute("SELECT group_concat(id, '/') FROM jobs").fetchone()[0]
        indexed = set(joined.split("/")) if joined else set()  # one string: a third of the cost of rows
        gone, new = indexed - on_disk, sorted(on_disk - indexed)
        del indexed, on_disk
        if gone:
            self.forget(sorted(gone))
        root = paths.jobs_dir()
        batch: list[JobState] = []
        for job_id in new:
            if not has_state(job_id, root):
                if stamp_of(job_id) is not None:
                    self._note_stateless(job_id)
                continue
            try:
                status = load_status(job_id)
            except StateFileError as e:
                self.broken.append(e)
                continue
            if not status.finished:
                self.live.append(status)
                continue
            batch.append(status)
            if len(batch) >= SYNC_BATCH:
                self._store(batch)
                batch = []
        self._store(batch)

    def _store(self, batch: list[JobState]) -> None:
        if batch:
            with self._transaction():
                for status in batch:
                    _insert(self.conn, status)

    def _note_stateless(self, job_id: str) -> None:
        """A folder without state.json is shown as a failed job with the reason, not hidden: its
        start was cut short (`collect prune` removes it once it is past retention)."""
        if not is_locked(paths.job_dir(job_id)):
            self.stateless.append(stateless_job(job_id))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def forget(self, job_ids_: list[str]) -> None:
        with self._transaction():
            for job_id in job_ids_:
                self.conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                self.conn.execute("DELETE FROM job_symbols WHERE job_id = ?", (job_id,))

    # -- queries -------------------------------------------------------------------------------
    def query(
        self,
        statuses: list[str] | None = None,
        symbol: str | None = None,
        provider: str | None = None,
        since: str | None = None,
        until: str | None = None,
        search: str | None = None,
        limit: int | None = None,
    ) -> Iterator[JobState]:
        """Jobs (without their per-symbol entries) matching every filter, newest first (ISO
        strings compare as times), read from the index as they are consumed: listing 20,000 jobs
        holds one row at a time."""
        where, args = ["1=1"], []
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
        if symbol:
            where.append("id IN (SELECT job_id FROM job_symbols WHERE symbol = ?)")
            args.append(symbol)
        if provider:
            where.append("provider = ?")
            args.append(provider)
        if since:
            where.append("created_at >= ?")
            args.append(since)
        if until:
            where.append("created_at <= ?")
            args.append(until)
        if search:
            like = f"%{_like_literal(search.lower())}%"  # the same substring match as for live jobs
            where.append("(lower(id) LIKE ? ESCAPE '\\' OR lower(coalesce(name, '')) LIKE ? ESCAPE '\\' OR id IN "
                         "(SELECT job_id FROM job_symbols WHERE lower(symbol) LIKE ? ESCAPE '\\'))")
            args += [like, like, like]
        sql = f"SELECT summary FROM jobs WHERE {' AND '.join(where)} ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        finished = (_from_summary(json.loads(r[0])) for r in self.conn.execute(sql, args))
        live = sorted((s for s in self.live + self.stateless
                       if _live_matches(s, statuses, symbol, provider, since, until, search)), key=_newest_first)
        merged = heapq.merge(finished, live, key=_newest_first)  # ids follow the creation sequence
        return itertools.islice(merged, limit)

    def named(self, name: str) -> list[str]:
        """Ids of the jobs called `name`, newest first."""
        rows = [r[0] for r in self.conn.execute("SELECT id FROM jobs WHERE name = ?", (name,))]
        return sorted(rows + [s.id for s in self.live if s.name == name], reverse=True)

    def finished_since(self, since: str | None) -> list[FinishedRow]:
        """The numbers stats need, straight from the index columns (no JSON decoding)."""
        sql, args = f"SELECT {', '.join(FinishedRow._fields)} FROM jobs", []
        if since:
            sql += " WHERE coalesce(completed_at, created_at) >= ?"
            args.append(since)
        return [FinishedRow(*row) for row in self.conn.execute(sql, args)]

    def errors_since(self, since: str | None, top: int = 5) -> list[tuple[str, int]]:
        sql = ("SELECT s.error, count(*) FROM job_symbols s JOIN jobs j ON j.id = s.job_id "
               "WHERE s.error IS NOT NULL")
        args = []
        if since:
            sql += " AND coalesce(j.completed_at, j.created_at) >= ?"
            args.append(since)
        sql += f" GROUP BY s.error ORDER BY count(*) DESC, s.error LIMIT {int(top)}"
        return [(r[0], r[1]) for r in self.conn.execute(sql, args)]

    def records(self) -> list[tuple[str, str, bool]]:
        """(id, the newest time the job's state recorded, finished) for every readable job."""
        sql = "SELECT id, max(created_at, coalesce(completed_at, created_at)) FROM jobs"
        rows = [(r[0], r[1], True) for r in self.conn.execute(sql)]
        live = [(s.id, max(s.created_at, s.updated_at or s.created_at), False) for s in self.live]
        return rows + live


STATELESS_ERROR = "no state file: its start was interrupted before the job was written"


def stateless_job(job_id: str) -> JobState:
    """What `list` shows for a job folder without state.json: failed, with the reason; created
    when its id says (its creation stamp)."""
    from ktrdr_collect.jobs.folders import iso

    created = iso((stamp_of(job_id) or 0) / 1000)
    job = JobState(id=job_id, provider="?", timeframe="?", start=created, end=created, created_at=created,
                   status="failed", completed_at=created, updated_at=created, error=STATELESS_ERROR)
    job.health = None
    return job


def _like_literal(text: str) -> str:
    """`text` as a LIKE pattern matching only itself: % and _ are literal, as in a substring search."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _from_summary(data: dict[str, Any]) -> JobState:
    """A finished job as the index keeps it (its health as it ended)."""
    job = JobState.from_json(data)
    if "health" in data:
        job.health = {"word": data["health"], "reasons": list(data.get("health_reasons") or [])}
    return job


def _live_matches(s: JobState, statuses: list[str] | None, symbol: str | None, provider: str | None,
                  since: str | None, until: str | None, search: str | None) -> bool:
    symbols = [e.symbol for e in s.symbols]
    checks = [
        not statuses or s.status in statuses,
        not symbol or symbol in symbols,
        not provider or s.provider == provider,
        not since or s.created_at >= since,
        not until or s.created_at <= until,
        not search or any(search.lower() in h.lower() for h in (s.id, s.name or "", *symbols)),
    ]
    return all(checks)
