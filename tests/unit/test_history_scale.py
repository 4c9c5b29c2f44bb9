"""The job history at scale: syncing the index holds one batch of states, not all of them; `last`
and folder listing stay right with their cheaper paths."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ktrdr_collect import paths
from ktrdr_collect.jobs import folders, history
from ktrdr_collect.jobs.folders import folder_names, iso, job_id_for, resolve
from ktrdr_collect.jobs.launch import JobRequest, job_spec
from ktrdr_collect.jobs.record import JobState, new_state
from ktrdr_collect.jobs.statefile import write_state

T0 = 1_700_000_000.0


def finished_job(home: Path, i: int, symbols: int = 3) -> str:
    """A completed job folder written directly (job.json + state.json), created at T0 + i s."""
    created = T0 + i
    job_id = job_id_for(int(created * 1000))
    end = datetime.fromtimestamp(created, UTC).replace(microsecond=0)
    req = JobRequest(symbols=[f"S{i}_{k}" for k in range(symbols)], timeframe="1d",
                     start=end - timedelta(days=30), end=end, provider="demo", data_dir=home / "data")
    spec = job_spec(req)
    state = new_state(job_id, spec, iso(created), None, False)
    state.status = "completed"
    state.completed_at = state.updated_at = iso(created + 1)
    for e in state.symbols:
        e.status, e.stage = "completed", "done"
    state.symbols_completed = symbols
    folder = paths.ensure_private_dir(paths.jobs_dir()) / job_id
    folder.mkdir(mode=0o700)
    spec.write(folder)
    write_state(folder, state)
    return job_id


def test_sync_holds_one_batch_of_finished_states_at_a_time(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [finished_job(home, i) for i in range(23)]
    monkeypatch.setattr(history, "SYNC_BATCH", 5, raising=False)
    read = stored = most = 0  # states read from folders, rows written: the difference is held in memory
    real_load, real_insert = history.load_status, history._insert

    def load(job_id: str) -> JobState:
        nonlocal read, most
        read += 1
        most = max(most, read - stored)
        return real_load(job_id)

    def insert(conn: object, status: JobState) -> None:
        nonlocal stored
        stored += 1
        real_insert(conn, status)  # type: ignore[arg-type]

    monkeypatch.setattr(history, "load_status", load)
    monkeypatch.setattr(history, "_insert", insert)
    with history.History() as h:
        listed = [s.id for s in h.query()]
        symbols = h.conn.execute("SELECT count(*) FROM job_symbols").fetchone()[0]
    assert listed == sorted(ids, reverse=True)  # every job indexed, newest first
    assert symbols == 23 * 3
    assert read == stored == 23
    assert most <= 5  # one batch at a time: never all 23


def test_sync_forgets_deleted_folders_and_adds_new_ones(home: Path) -> None:
    ids = [finished_job(home, i) for i in range(4)]
    with history.History() as h:
        assert [s.id for s in h.query()] == ids[::-1]
    os.rename(paths.job_dir(ids[1]), paths.jobs_dir() / ".gone")  # hidden: no longer a job
    new = finished_job(home, 10)
    with history.History() as h:
        assert [s.id for s in h.query()] == [new, ids[3], ids[2], ids[0]]
        assert h.conn.execute("SELECT count(*) FROM job_symbols WHERE job_id = ?", (ids[1],)).fetchone()[0] == 0


def test_last_is_the_newest_folder_with_a_state(home: Path) -> None:
    ids = [finished_job(home, i) for i in range(3)]
    assert resolve("last") == ids[-1]
    (paths.jobs_dir() / job_id_for(int((T0 + 50) * 1000))).mkdir(mode=0o700)  # newer, no state yet
    assert resolve("last") == ids[-1]


def test_last_without_jobs_is_not_found(home: Path) -> None:
    paths.ensure_private_dir(paths.jobs_dir())
    with pytest.raises(folders.JobNotFoundError):
        resolve("last")


def test_folder_names_are_directories_and_id_shaped_names(home: Path) -> None:
    job = finished_job(home, 0)
    jobs = paths.jobs_dir()
    (jobs / "by-hand").mkdir()  # not id-shaped, a directory: a name that can be a job
    (jobs / "notes").write_text("x")  # a file: not a job
    (jobs / ".hidden").mkdir()
    (jobs / f".{job_id_for(1)}.new").mkdir()  # a start's staging folder
    assert folder_names() == {job, "by-hand"}


def test_summary_is_the_public_status_without_its_symbols(home: Path) -> None:
    job = finished_job(home, 0)
    state = folders.load_status(job)
    state.name, state.error = "night\x1b[31m", "bad\x07 thing"  # cleaned in both
    public = state.public()
    assert public.pop("symbols") == [e.public() for e in state.symbols]
    assert list(state.summary().items()) == list(public.items())
