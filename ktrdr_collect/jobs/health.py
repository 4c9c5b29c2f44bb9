"""A job's health in one word — healthy, degraded, struggling — from its own numbers.

The thresholds (docs/jobs.md, "Health"):

| signal | degraded at | struggling at |
|---|---|---|
| requests that failed (retried or not): `errors_count / requests` | 5 % | 25 % |
| requests refused for rate limiting: `throttled / requests` | 5 % | 25 % |
| series that failed, of those finished | any | half (of 2 or more) |
| no progress while running (`progress_at`) | 60 s | 300 s |

Rates count only once a job has made `MIN_REQUESTS` requests, so one early retry is not a trend.
A paused job is never stalled. The word is the worst signal's; `reasons` names each signal that
is not healthy.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from ktrdr_collect.jobs import model

if TYPE_CHECKING:
    from ktrdr_collect.jobs.record import JobState

HEALTHY, DEGRADED, STRUGGLING = "healthy", "degraded", "struggling"
MIN_REQUESTS = 20
RATE_DEGRADED, RATE_STRUGGLING = 0.05, 0.25
STALL_DEGRADED_S, STALL_STRUGGLING_S = 60.0, 300.0
_RANK = {HEALTHY: 0, DEGRADED: 1, STRUGGLING: 2}


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _rate(word: str, part: int, whole: int) -> tuple[str, str] | None:
    if whole < MIN_REQUESTS or not part:
        return None
    share = part / whole
    level = STRUGGLING if share >= RATE_STRUGGLING else DEGRADED if share >= RATE_DEGRADED else HEALTHY
    return (level, f"{share:.0%} of requests {word}") if level != HEALTHY else None


def assess(state: JobState, now: float) -> dict[str, Any]:
    """{"word": ..., "reasons": [...]} for the state as a reader sees it at wall time `now`."""
    found = [
        _rate("failed", state.errors_count, state.requests),
        _rate("throttled", state.throttled, state.requests),
    ]
    done = state.symbols_completed + state.symbols_failed
    if state.symbols_failed:
        level = STRUGGLING if done >= 2 and state.symbols_failed * 2 >= done else DEGRADED
        found.append((level, f"{state.symbols_failed} of {done} finished series failed"))
    since = _epoch(state.progress_at or state.started_at)
    if state.status == model.RUNNING and since is not None:
        quiet = max(0.0, now - since)  # a clock stepped back reads as no stall, never as a long one
        if quiet >= STALL_DEGRADED_S:
            level = STRUGGLING if quiet >= STALL_STRUGGLING_S else DEGRADED
            found.append((level, f"no progress for {quiet:.0f} s"))
    reasons = [f for f in found if f is not None]
    word = max((level for level, _ in reasons), key=_RANK.__getitem__, default=HEALTHY)
    return {"word": word, "reasons": [text for _, text in reasons]}
