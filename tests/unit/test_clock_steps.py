"""Clock steps are harmless (issue 15): job order and `last` follow the creation sequence, and
retention never prunes on the word of a clock that went back or far ahead of the jobs' own
records. Time is injected (create_folder(now=...), prune(now=...)); nothing sleeps."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ktrdr_collect.jobs import folders, retention
from ktrdr_collect.jobs.folders import create_folder, job_ids, publish_folder, resolve
from ktrdr_collect.jobs.launch import JobRequest, write_job
from ktrdr_collect.jobs.statefile import write_state

DAY = 86400.0
T = datetime(2025, 3, 3, 12, tzinfo=UTC).timestamp()
REQ = JobRequest(symbols=["AAPL"], timeframe="1d", start=datetime(2024, 1, 1, tzinfo=UTC),
                 end=datetime(2024, 2, 1, tzinfo=UTC), provider="demo", data_dir=Path("/nonexistent"))


def make_job(now: float, status: str = "completed") -> str:
    """A job created, and (unless `status` says otherwise) finished, under a clock reading `now`."""
    new = create_folder(now)
    state = write_job(new.staging, new.job_id, REQ, created=now, seq=new.seq)
    state.status = status  # set up as found on disk (not a transition)
    if status in ("completed", "failed", "cancelled"):
        state.completed_at = state.updated_at = folders.iso(now + 60)
    write_state(new.staging, state)
    publish_folder(new)
    return new.job_id


def test_last_is_the_newest_job_after_the_clock_went_back(home: Path) -> None:
    ahead = make_job(T + 2 * DAY)  # created while the clock was two days ahead
    fixed = make_job(T)  # then the clock was put right
    assert resolve("last") == fixed
    assert job_ids() == [ahead, fixed]


def test_ids_follow_the_creation_sequence_whatever_the_clock_does(home: Path) -> None:
    readings = [T, T + 365 * DAY, T - 30 * DAY, T, T, T - 1, T + 1, T - 400 * DAY]
    ids = [make_job(now) for now in readings]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) <= 16 and set(i) <= set("abcdefghijklmnopqrstuvwxyz0123456789-") for i in ids)
    assert resolve("last") == ids[-1]
    seqs = [folders.read_state(home / "jobs" / i).seq for i in ids]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_the_sequence_survives_losing_its_counter_file(home: Path) -> None:
    first = make_job(T + 10 * DAY)
    os.remove(home / "jobs" / folders.SEQ_FILE)
    second = make_job(T)
    (home / "jobs" / folders.SEQ_FILE).write_text("not a number")
    third = make_job(T)
    assert [first, second, third] == job_ids()


def test_next_stamp_is_the_clock_when_it_moves_forward() -> None:
    assert folders.next_stamp(None, 5.0) == 5000
    assert folders.next_stamp(4000, 5.0) == 5000
    assert folders.next_stamp(9000, 5.0) == 9001


def test_a_start_under_a_clock_a_year_ahead_prunes_nothing(home: Path) -> None:
    history = [make_job(T - 2 * DAY), make_job(T - DAY), make_job(T)]
    skewed = make_job(T + 365 * DAY)  # what `collect start` under the wrong clock made
    assert retention.auto_prune(30, now=T + 365 * DAY) == []
    assert retention.prune(30 * DAY, now=T + 365 * DAY) == []  # `collect prune`, same clock
    assert job_ids() == [*history, skewed]


def test_two_starts_under_a_clock_a_year_ahead_prune_nothing(home: Path) -> None:
    history = [make_job(T - 2 * DAY), make_job(T - DAY), make_job(T)]
    first, second = make_job(T + 365 * DAY), make_job(T + 365 * DAY)  # the second start prunes
    assert retention.auto_prune(30, now=T + 365 * DAY) == []
    assert job_ids() == [*history, first, second]


def test_a_clock_that_went_back_prunes_nothing_and_its_jobs_do_not_look_old(home: Path) -> None:
    before = [make_job(T - 10 * DAY), make_job(T)]
    back = make_job(T - 400 * DAY)  # created after them, stamped by a clock 400 days behind
    assert retention.prune(30 * DAY, now=T - 400 * DAY) == []
    assert retention.prune(30 * DAY, now=T + DAY) == []  # the clock is right again
    assert job_ids() == [*before, back]


def test_retention_still_prunes_what_the_records_say_is_old(home: Path) -> None:
    old, recent, newest = make_job(T - 40 * DAY), make_job(T - 10 * DAY), make_job(T)
    running = make_job(T - 90 * DAY, status="running")  # never pruned (it reads interrupted)
    assert retention.prune(30 * DAY, now=T + 60, dry_run=True) == [old]
    assert retention.prune(7 * DAY, now=T + 60) == [old, recent]
    assert job_ids() == [newest, running]


def test_the_newest_record_vouches_only_within_the_trusted_leap() -> None:
    rec = retention.Record
    past = [rec("a", T - 2 * DAY), rec("b", T)]
    assert retention.history_clock([*past, rec("c", T + DAY)]) == T + DAY
    assert retention.history_clock([*past, rec("c", T + 365 * DAY)]) == T
    confirmed = [*past, rec("c", T + 365 * DAY), rec("d", T + 365 * DAY)]
    assert retention.history_clock(confirmed) == T + 365 * DAY  # two records agreeing are believed
    assert retention.reference_time(T - DAY, past) == T - DAY  # never ahead of the clock either
    assert retention.history_clock([]) is None


@pytest.mark.parametrize("skew_days", [-400, -1, 0, 2, 365])
def test_effective_age_never_goes_back_along_the_sequence(skew_days: int) -> None:
    rec = retention.Record
    records = [rec("a", T - 5 * DAY), rec("b", T), rec("c", T + skew_days * DAY)]
    ages = retention.effective_ages(records)
    assert ages["c"] >= ages["b"] >= ages["a"]
