"""The job queue's decisions (jobs.queue), with job folders made by hand and locks held in-process;
starting a runner is replaced by a recorder (the real processes: tests/e2e/test_queue_e2e.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ktrdr_collect import config, paths
from ktrdr_collect.errors import InvalidInputError
from ktrdr_collect.jobs import actions, launch, queue
from ktrdr_collect.jobs.folders import job_id_for, load_status
from ktrdr_collect.jobs.lock import JobLock
from ktrdr_collect.jobs.statefile import read_state, write_state

_next = [1_700_000_000_000]


def make_job(status: str = "running", queued: bool = False) -> str:
    _next[0] += 1
    job_id = job_id_for(_next[0])
    folder = paths.ensure_private_dir(paths.jobs_dir()) / job_id
    folder.mkdir(mode=0o700)
    req = launch.JobRequest(symbols=["AAPL"], timeframe="1d", start=datetime(2024, 1, 1, tzinfo=UTC),
                            end=datetime(2024, 2, 1, tzinfo=UTC), provider="demo")
    state = launch.write_job(folder, job_id, req, queued=queued)
    state.status = status  # set up as found on disk (not a transition)
    if queued:
        queue.mark_queued(job_id)
    write_state(folder, state)
    return job_id


@pytest.fixture
def locks() -> Iterator[list[JobLock]]:
    held: list[JobLock] = []
    yield held
    for lock in held:
        lock.release()


def hold(job_id: str, locks: list[JobLock]) -> None:
    lock = JobLock(paths.job_dir(job_id))
    assert lock.try_acquire()
    locks.append(lock)


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    started: list[str] = []

    def fake_spawn(job_id: str, lock: JobLock) -> None:
        started.append(job_id)

    monkeypatch.setattr(launch, "spawn_runner", fake_spawn)
    return started


def set_limit(n: int | None) -> None:
    if n is None:
        config.unset_value("max_running_jobs")
    else:
        config.set_value("max_running_jobs", str(n))


def test_config_key_is_a_positive_whole_number_or_unset(home: Path) -> None:
    assert config.load_settings()["max_running_jobs"] is None
    assert queue.limit() is None
    assert config.set_value("max_running_jobs", "3") == 3 and queue.limit() == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(InvalidInputError, match="max_running_jobs"):
            config.set_value("max_running_jobs", bad)
    assert config.unset_value("max_running_jobs") and queue.limit() is None


def test_running_means_locked_and_active_and_not_queued(home: Path, locks: list[JobLock]) -> None:
    live = make_job("running")
    paused = make_job("paused")
    starting = make_job("pending")
    dead = make_job("running")  # state says running, but nobody holds its lock: interrupted
    ending = make_job("completed")  # its runner still holds the lock while it hands over
    waiting = make_job("pending", queued=True)
    for job_id in (live, paused, starting, ending):
        hold(job_id, locks)
    assert queue.running_ids() == [live, paused, starting]
    assert queue.running_ids(exclude=paused) == [live, starting]
    assert dead not in queue.running_ids() and waiting not in queue.running_ids()


def test_queue_order_and_position(home: Path) -> None:
    a, b, c = (make_job("pending", queued=True) for _ in range(3))
    assert queue.queued_ids() == [a, b, c]
    assert [queue.ahead(j) for j in (a, b, c)] == [0, 1, 2]
    assert queue.ahead(make_job("running")) is None
    queue.forget(b)
    queue.forget(b)  # twice is fine
    assert queue.ahead(c) == 1


def test_must_wait(home: Path, locks: list[JobLock]) -> None:
    assert not queue.must_wait(None)
    assert not queue.must_wait(1)
    hold(make_job("running"), locks)
    assert queue.must_wait(1) and not queue.must_wait(2)
    make_job("pending", queued=True)
    assert queue.must_wait(2)  # a new job never overtakes a queued one
    assert not queue.must_wait(None)


def test_a_queued_job_reads_pending_and_one_without_its_entry_interrupted(
        home: Path, locks: list[JobLock], spawned: list[str]) -> None:
    set_limit(1)
    hold(make_job("running"), locks)  # reading a queued job recovers the queue: keep the slot taken
    a, b = make_job("pending", queued=True), make_job("pending", queued=True)
    st = load_status(b)
    assert st.status == "pending" and st.queue_ahead == 1 and st.exit_code is None
    queue.forget(a)
    assert load_status(b).queue_ahead == 0
    queue.forget(b)  # lost its entry: nothing would ever start it, so it shows as resumable
    assert load_status(b).status == "interrupted"
    assert load_status(b).queue_ahead is None


def test_dispatch_starts_the_oldest_for_the_free_slots(home: Path, locks: list[JobLock],
                                                       spawned: list[str]) -> None:
    set_limit(2)
    hold(make_job("running"), locks)
    queued = [make_job("pending", queued=True) for _ in range(3)]
    assert queue.dispatch() == [queued[0]] and spawned == [queued[0]]
    state = read_state(paths.job_dir(queued[0]))
    assert not state.queued and state.status == "pending" and state.started_at
    assert queue.queued_ids() == queued[1:]
    hold(queued[0], locks)  # its runner
    assert queue.dispatch() == []  # both slots taken
    ending = locks[0].folder.name  # the hand-over of an ending runner does not count that runner
    assert queue.dispatch(exclude=ending) == [queued[1]]
    assert queue.queued_ids() == [queued[2]]


def test_dispatch_without_a_limit_starts_everything_queued(home: Path, spawned: list[str]) -> None:
    queued = [make_job("pending", queued=True) for _ in range(3)]
    assert queue.dispatch() == queued == spawned


def test_dispatch_drops_entries_of_cancelled_or_missing_jobs(home: Path, spawned: list[str]) -> None:
    set_limit(1)
    cancelled = make_job("cancelled", queued=True)
    queue.mark_queued("00000000-0000")  # a start killed before it published its folder
    nxt = make_job("pending", queued=True)
    assert queue.dispatch() == [nxt]
    assert queue.queued_ids() == [] and spawned == [nxt]
    assert cancelled not in spawned


def test_dispatch_does_not_overtake_a_busy_job(home: Path, locks: list[JobLock], spawned: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    set_limit(5)
    a, b = make_job("pending", queued=True), make_job("pending", queued=True)
    monkeypatch.setattr(JobLock, "try_acquire", lambda self, attempts=1, interval=0.0: False)
    assert queue.dispatch() == [] and queue.queued_ids() == [a, b]


def test_cancel_of_a_queued_job(home: Path, spawned: list[str]) -> None:
    set_limit(1)
    job_id = make_job("pending", queued=True)
    st = actions.cancel(job_id)
    assert st.status == "cancelled" and st.completed_at
    assert not read_state(paths.job_dir(job_id)).queued
    assert queue.queued_ids() == [] and spawned == []


def test_create_job_queues_beyond_the_limit(home: Path, locks: list[JobLock], spawned: list[str]) -> None:
    req = launch.JobRequest(symbols=["AAPL"], timeframe="1d", start=datetime(2024, 1, 1, tzinfo=UTC),
                            end=datetime(2024, 2, 1, tzinfo=UTC), provider="demo")
    first = launch.create_job(req)  # no limit: runs, as before
    assert spawned == [first] and queue.queued_ids() == []
    set_limit(1)
    hold(first, locks)  # its runner
    second = launch.create_job(req)
    assert spawned == [first] and queue.queued_ids() == [second]
    assert read_state(paths.job_dir(second)).queued is True
    assert load_status(second).status == "pending"


def test_recover_never_fails_a_command(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_job("pending", queued=True)
    (home / "config.toml").write_text("max_running_jobs = 'many'\n")
    assert queue.recover() == []  # the command itself reports the broken config
