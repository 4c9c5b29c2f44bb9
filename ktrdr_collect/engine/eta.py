"""Rate and ETA from provider requests, on an injected monotonic clock.

The unit of work is one provider request. Throughput is measured on *active* time (paused spans
removed), so a pause never drags the estimate:

* ``rate`` = requests finished in the last ``window_s`` seconds of active time / that span
  (all active time while less than ``window_s`` has passed);
* ``remaining`` = planned requests not yet done + (symbols not yet planned) x (mean requests of
  the planned symbols);
* ETA = remaining / rate, where rate is capped by the provider's known limit (requests/s).
"""

from __future__ import annotations

from collections import deque


class RequestRate:
    def __init__(self, window_s: float = 20.0, limit: float | None = None) -> None:
        self.window_s = window_s
        self.limit = limit
        self._done: deque[float] = deque()  # active-time stamps of finished requests

    def record(self, active_now: float) -> None:
        self._done.append(active_now)

    def rate(self, active_now: float) -> float | None:
        while self._done and self._done[0] < active_now - self.window_s:
            self._done.popleft()
        span = min(active_now, self.window_s)
        if not self._done or span <= 0:
            return None
        rate = len(self._done) / span
        return min(rate, self.limit) if self.limit else rate


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
    if remaining == 0:
        return 0.0
    if not rate:
        return None
    return remaining / rate
