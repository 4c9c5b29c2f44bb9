"""Rate and ETA from provider requests, on an injected monotonic clock (docs/eta.md).

The unit of work is one provider request. All times are *active* time (paused spans removed), so
a pause never drags the estimate. The estimator, with its parameters:

* work done = requests finished + the share done of each request in flight: 1 - its expected
  remaining time (from the last ``SERVICE_SAMPLES`` request durations longer than its elapsed
  time) / the mean duration, at most ``INFLIGHT_CAP``; the estimate moves smoothly between
  completions instead of in steps of one burst of workers;
* rate = work done over a sliding window of ``WINDOW_S`` active seconds (all active time while
  younger), capped by the provider's known limit (requests/s). The window restarts when the time
  the last ``RECENT_REQUESTS`` requests took is implausible (more than ``CHANGE_Z`` Poisson
  standard deviations) under the rate of the older part of the window; it restarts at the change
  point (CUSUM), so a slowdown or speed-up is followed within seconds while a steady rate keeps
  the low noise of the long window;
* remaining = planned requests not yet done + (symbols not yet planned) x (mean requests of the
  planned symbols) - the share done of the requests in flight;
* ETA = max(remaining / rate, pool): pool is when the workers finish if each running symbol keeps
  its worker for its own remaining requests (one per mean request time, no faster than the limit)
  and the symbols not started go to whichever worker is free first, at the pool's measured pace.
  It is the tail, where fewer symbols than workers are left and the pool's throughput no longer
  applies; with many symbols to go it equals remaining / rate up to whole rounds of symbols.
"""

from __future__ import annotations

import math
from collections import deque

WINDOW_S = 20.0
"""Longest span (active seconds) the rate is measured over."""
RECENT_REQUESTS = 24
"""The recent span compared with the rest of the window to detect a change of rate: the time the
last this-many requests took (a 2x change is then detectable at CHANGE_Z = 3)."""
CHANGE_Z = 3.0
"""How many standard deviations (Poisson) the recent span must be off to restart the window."""
SERVICE_SAMPLES = 20
"""Request durations averaged for the mean service time (request start to segment done)."""
INFLIGHT_CAP = 0.9
"""The most a request in flight counts as done, however long it has been running."""


class RequestRate:
    """Requests per second of active time over a sliding window that restarts at a change of rate.

    `record(t, work)` marks that `work` requests' worth was done by active time `t` (default: one
    more than before); `rate(t, work)` is (work now - work at the window's start) / the span.
    """

    def __init__(
        self,
        window_s: float = WINDOW_S,
        limit: float | None = None,
        recent_requests: int = RECENT_REQUESTS,
        change_z: float = CHANGE_Z,
    ) -> None:
        self.window_s = window_s
        self.limit = limit
        self.recent_requests = recent_requests
        self.change_z = change_z
        self._count = 0
        self._marks: deque[tuple[float, float]] = deque([(0.0, 0.0)])  # (active time, work done)

    @property
    def count(self) -> int:
        """Requests recorded so far."""
        return self._count

    def record(self, active_now: float, work: float | None = None) -> None:
        self._count += 1
        self._marks.append((active_now, float(self._count) if work is None else work))
        self._prune(active_now)
        self._restart_on_change(active_now)

    def _prune(self, active_now: float) -> None:
        """Forget marks older than the window, keeping at least one as the window's start."""
        while len(self._marks) > 1 and self._marks[1][0] <= active_now - self.window_s:
            self._marks.popleft()

    def _base(self, since: float) -> tuple[float, float]:
        """The oldest mark at or after `since` (else the newest mark)."""
        for mark in self._marks:
            if mark[0] >= since:
                return mark
        return self._marks[-1]

    def _recent_start(self) -> tuple[float, float] | None:
        """The newest mark at least `recent_requests` before the last one."""
        w_now = self._marks[-1][1]
        for mark in reversed(self._marks):
            if mark[1] <= w_now - self.recent_requests:
                return mark
        return None

    def _restart_on_change(self, active_now: float) -> None:
        """Drop the marks before the recent span when the work done in it is implausible (Poisson,
        `change_z` standard deviations) under the rate of the older part of the window."""
        recent = self._recent_start()
        if recent is None:
            return
        (t0, w0), (tr, wr), w_now = self._marks[0], recent, self._marks[-1][1]
        older_span, recent_span = tr - t0, active_now - tr
        if older_span < recent_span or older_span <= 0:
            return
        old_rate = (wr - w0) / older_span
        expected = old_rate * recent_span
        if abs((w_now - wr) - expected) > self.change_z * math.sqrt(max(expected, 1.0)):
            self._restart_at(self._change_point(tr, old_rate))

    def _change_point(self, since: float, old_rate: float) -> float:
        """Where in the recent span the change most likely began (CUSUM): the newest mark from
        which the work done departs from what the old rate predicts by (within one request) the
        most. Before a change that departure is flat, so the newest such mark is the change."""
        t_now, w_now = self._marks[-1]
        gaps = [(t, abs((w_now - w) - old_rate * (t_now - t))) for t, w in self._marks if t >= since]
        most = max(gap for _, gap in gaps)
        return max(t for t, gap in gaps if gap >= most - 1.0)

    def _restart_at(self, t: float) -> None:
        while self._marks[0][0] < t:
            self._marks.popleft()

    def rate(self, active_now: float, work: float | None = None) -> float | None:
        self._prune(active_now)
        t0, w0 = self._base(active_now - self.window_s)
        done = (float(self._count) if work is None else work) - w0
        span = active_now - t0
        if done <= 0 or span <= 0:
            return None
        rate = done / span
        return min(rate, self.limit) if self.limit else rate


class ServiceTime:
    """Mean duration of the last `samples` requests (start to segment done), in active seconds."""

    def __init__(self, samples: int = SERVICE_SAMPLES) -> None:
        self._durations: deque[float] = deque(maxlen=samples)

    def record(self, seconds: float) -> None:
        self._durations.append(max(0.0, seconds))

    @property
    def mean(self) -> float | None:
        if not self._durations:
            return None
        return sum(self._durations) / len(self._durations)

    def share_done(self, elapsed: float) -> float:
        """How much of a request running for `elapsed` seconds counts as done: 1 - its expected
        remaining time (over the recent durations longer than `elapsed`) / the mean duration.
        With equal durations that is elapsed / mean; with jitter it is less, since a request
        still running is likely one of the long ones."""
        mean = self.mean
        if not mean:
            return 0.0
        longer = [d - elapsed for d in self._durations if d > elapsed]
        if not longer:
            return INFLIGHT_CAP
        return min(INFLIGHT_CAP, max(0.0, 1.0 - sum(longer) / len(longer) / mean))


def estimate_remaining_requests(left: int, unplanned: int, planned_totals: list[int]) -> float | None:
    """Requests still to make: `left` planned ones plus an estimate for `unplanned` symbols."""
    if unplanned == 0:
        return float(left)
    if not planned_totals:
        return None
    return left + unplanned * sum(planned_totals) / len(planned_totals)


def eta_seconds(remaining: float | None, rate: float | None) -> float | None:
    if remaining is None:
        return None
    if remaining <= 0:
        return 0.0
    if not rate:
        return None
    return remaining / rate


def pool_seconds(running_left: list[float], pending: int, pending_requests: float, workers: int,
                 own_step_s: float, pool_step_s: float) -> float:
    """When the pool of `workers` finishes: each running symbol keeps its worker for its own
    remaining requests, one every `own_step_s` seconds; then the `pending` symbols
    (`pending_requests` in all, shared equally) go one by one to whichever worker is free first,
    at one request every `pool_step_s` seconds (the pool's measured pace, which includes the work
    between requests). Near the end this is the slowest running symbol, however many workers idle."""
    workers = max(workers, len(running_left), 1)
    free = sorted([left * own_step_s for left in running_left] + [0.0] * (workers - len(running_left)))
    each = pending_requests / pending * pool_step_s if pending else 0.0
    rounds, extra = divmod(pending, workers)
    return max(at + (rounds + (k < extra)) * each for k, at in enumerate(free))

