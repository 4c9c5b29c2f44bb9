"""Job health: one word from the job's own numbers, thresholds as documented in jobs/health.py."""

from __future__ import annotations

import pytest

from ktrdr_collect.jobs.health import assess
from ktrdr_collect.jobs.record import JobState

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
AT_T0 = "2023-11-14T22:13:20.000Z"


def job(**values: object) -> JobState:
    state = JobState("j", "demo", "1d", "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", AT_T0, status="running",
                     started_at=AT_T0, progress_at=AT_T0)
    for key, value in values.items():
        setattr(state, key, value)
    return state


@pytest.mark.parametrize(("values", "now", "word", "reason"), [
    ({"requests": 100}, T0 + 1, "healthy", None),
    ({"requests": 100, "errors_count": 5}, T0, "degraded", "5% of requests failed"),
    ({"requests": 100, "errors_count": 4}, T0, "healthy", None),
    ({"requests": 100, "throttled": 30}, T0, "struggling", "30% of requests throttled"),
    ({"requests": 10, "throttled": 9}, T0, "healthy", None),  # too few requests to call it a trend
    ({"symbols_completed": 9, "symbols_failed": 1}, T0, "degraded", "1 of 10 finished series failed"),
    ({"symbols_completed": 1, "symbols_failed": 1}, T0, "struggling", "1 of 2 finished series failed"),
    ({}, T0 + 61, "degraded", "no progress for 61 s"),
    ({}, T0 + 301, "struggling", "no progress for 301 s"),
    ({"status": "paused"}, T0 + 3600, "healthy", None),  # a paused job is not stalled
    ({}, T0 - 86400, "healthy", None),  # the clock stepped back: no stall, not a huge one
])
def test_health_word_and_reasons(values: dict[str, object], now: float, word: str, reason: str | None) -> None:
    health = assess(job(**values), now)
    assert health["word"] == word
    assert health["reasons"] == ([reason] if reason else [])


def test_the_worst_signal_wins_and_every_signal_is_named() -> None:
    health = assess(job(requests=100, errors_count=6, throttled=40), T0 + 70)
    assert health["word"] == "struggling"
    assert health["reasons"] == ["6% of requests failed", "40% of requests throttled", "no progress for 70 s"]


def test_the_reader_view_carries_health_into_the_public_status() -> None:
    view = job(requests=100, throttled=50, status="completed").view(alive=False)
    out = view.public()
    assert out["health"] == "struggling" and out["health_reasons"] == ["50% of requests throttled"]


def test_status_and_list_show_the_health_of_a_job_still_going() -> None:
    import time

    from ktrdr_collect.cli.fmt import status_word
    from ktrdr_collect.jobs.folders import iso

    just_now = iso(time.time())  # view() judges stalls by the wall clock
    assert status_word(job(requests=100, throttled=30, progress_at=just_now).view(alive=True)) == "running, struggling"
    assert status_word(job(requests=100, progress_at=just_now).view(alive=True)) == "running"
    assert status_word(job(requests=100, throttled=30, status="completed").view(alive=False)) == "completed"
