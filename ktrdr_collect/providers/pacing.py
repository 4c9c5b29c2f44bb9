"""Request pacing shared by every process on the machine.

Providers count requests per account or IP, over sliding windows ("20 a second", "60 in any
10 minutes"). The pacer keeps a log of reserved start times in a file under home, locked with
flock: a caller books the earliest moment at which every window still has room — allowing a small
margin for the time between our start and the provider's clock — then waits for it. Wall-clock
time, because the file outlives processes and reboots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ktrdr_collect import paths
from ktrdr_collect.providers.shared_file import locked_json

Window = tuple[int, float]
"""(at most this many requests, in any span of this many seconds)."""

MARGIN = 0.02
"""Extra spacing, as a fraction of each window, for scheduling delays between our clock and the
provider's; it costs at most 2% of the allowed rate."""


FUTURE_TOLERANCE = 1.0
"""Seconds a stamp may lie beyond where any real booking can (see `SharedPacer._read`)."""


def _remove(stamps: list[float], slot: float) -> None:
    key = round(slot, 6)
    for i, s in enumerate(stamps):
        if abs(s - key) < 1e-6:
            del stamps[i]
            return


def windows_for_rate(rate: float) -> list[Window]:
    """`rate` requests per second as a sliding window: 20/s -> 20 in any 1 s; 0.1/s -> 1 in any 10 s."""
    if rate >= 1:
        return [(math.floor(rate), 1.0)]
    return [(1, 1.0 / rate)]


class SharedPacer:
    """`windows` bound the count in any span; `spacing` (seconds) spreads requests evenly instead of
    in bursts, so that a burst's own queueing delay cannot push it into the provider's next window."""

    def __init__(self, path: Path, windows: Sequence[Window], clock: Callable[[], float] = time.time,
                 spacing: float = 0.0) -> None:
        if not windows or any(n < 1 or w <= 0 for n, w in windows):
            raise ValueError("pacing windows need a count >= 1 and a span > 0")
        self.path = path
        self.windows = list(windows)
        self.spacing = spacing * 0.9  # looser than the windows: it only smooths bursts, the windows bind
        self.horizon = max(w for _, w in windows) * (1 + MARGIN)
        self.clock = clock

    @property
    def rate(self) -> float:
        """The sustained requests per second these windows allow."""
        return min(n / (w * (1 + MARGIN)) for n, w in self.windows)

    def _slot(self, stamps: list[float], now: float) -> float:
        slot = max(now, stamps[-1] + self.spacing) if stamps else now
        return max(slot, self._slot_in_windows(stamps, now))

    def _update(self, change: Callable[[list[float], float], Any]) -> Any:
        """Run `change(stamps, now)` on the shared log under its lock, then save the log."""
        with locked_json(self.path) as shared:
            now = self.clock()
            stamps = self._read(shared.load(), now)
            result = change(stamps, now)
            shared.save([round(s, 6) for s in sorted(stamps)])
            return result

    def reserve(self) -> float:
        """Book the next start time every window allows; return it (wall clock)."""

        def book(stamps: list[float], now: float) -> float:
            slot = self._slot(stamps, now)
            stamps.append(slot)
            return slot

        return self._update(book)

    def confirm(self, slot: float) -> tuple[float, float]:
        """The request booked at `slot` is about to go: check the windows again against when the
        others really went out, and commit. Returns (0, now) when it may start; else (seconds to
        wait, its new booking) — confirm again after that wait. A thread that was held up past its
        slot thus neither crowds a window nor is crowded by one that was held up before it."""

        def commit(stamps: list[float], now: float) -> tuple[float, float]:
            _remove(stamps, slot)
            started = [s for s in stamps if s <= now]
            start = max(now, self._slot_in_windows(started, now))
            stamps.append(start)
            return start - now, start

        return self._update(commit)  # type: ignore[return-value]

    def _slot_in_windows(self, stamps: list[float], now: float) -> float:
        slot = now
        for count, span in self.windows:
            if len(stamps) >= count:
                slot = max(slot, stamps[-count] + span * (1 + MARGIN))
        return slot

    def _read(self, data: Any, now: float) -> list[float]:
        try:
            stamps = sorted(float(s) for s in data or [])
        except (ValueError, TypeError):
            return []
        # forget what no window can see any more
        stamps = [s for s in stamps if now - self.horizon < s]
        # and what lies beyond the reach of real bookings: each booking is at most one window
        # (plus spacing) after `now` or after the booking before it, so a stamp past a larger gap
        # was written by a clock that has since been stepped back (NTP, VM restore). Kept, it would
        # hold every request until the clock caught up; it counts as expired instead.
        reach = now + self.horizon + self.spacing + FUTURE_TOLERANCE
        kept = []
        for s in stamps:
            if s > reach:
                break
            kept.append(s)
            reach = max(reach, s + self.horizon + self.spacing + FUTURE_TOLERANCE)
        return kept

    def delay(self) -> tuple[float, float]:
        """Reserve a slot; return (seconds to wait for it, the slot to confirm when starting)."""
        slot = self.reserve()
        return max(0.0, slot - self.clock()), slot

    def wait_turn(self, sleep: Callable[[float], bool]) -> float | None:
        """Book a slot, sleep until it, confirm; repeat until confirmed, and return the confirmed
        slot. `sleep(seconds)` returns False when interrupted (pause, cancel): then this returns
        None and the booking is given back."""
        delay, slot = self.delay()
        while delay <= 0 or sleep(delay):
            delay, slot = self.confirm(slot)
            if delay <= 0:
                return slot
        self.release(slot)
        return None

    def correct(self, slot: float, sent_at: float) -> None:
        """The request confirmed at `slot` really left at `sent_at` (its thread was held up in
        between): move its stamp, so the next window counts from when the provider saw it."""
        if sent_at > slot + 0.001:

            def move(stamps: list[float], now: float) -> None:
                _remove(stamps, slot)
                stamps.append(sent_at)

            self._update(move)

    def release(self, slot: float) -> None:
        """Give back a booking that will not be used (the job paused or was cancelled)."""

        self._update(lambda stamps, now: _remove(stamps, slot))

    def stamp(self) -> None:
        """Count one request now, without waiting (IB's second stamp for BID_ASK)."""
        self._update(lambda stamps, now: stamps.append(now))


class Pacer(Protocol):
    """What a job's requests are paced with: a `SharedPacer` (this machine) or a
    `redis_pacing.RedisPacer` (every host)."""

    @property
    def rate(self) -> float: ...

    def wait_turn(self, sleep: Callable[[float], bool]) -> float | None: ...

    def correct(self, slot: float, sent_at: float) -> None: ...

    def release(self, slot: float) -> None: ...

    def stamp(self) -> None: ...

Pacing = tuple[float | None, Sequence[Window] | None]
"""(requests per second, windows) as a provider declares them (`Provider.pacing_for`)."""


def _windows_of(pacing: Pacing) -> list[Window]:
    rate, windows = pacing
    if windows is not None:
        return list(windows)
    return windows_for_rate(rate) if rate else []


def same_pacing(a: Pacing, b: Pacing) -> bool:
    return a[0] == b[0] and (None if a[1] is None else list(a[1])) == (None if b[1] is None else list(b[1]))


def log_name(provider_name: str, pacing: Pacing, default: Pacing | None = None) -> str:
    """The shared log's name: the provider's name for its default pacing; a pacing that differs
    from it (IB's soft pacing for bars of a minute or more) is another budget with its own log,
    named by its windows (`ib-2per1s`), so every job with that pacing shares it machine-wide."""
    if default is None or same_pacing(pacing, default):
        return provider_name
    return provider_name + "".join(f"-{n}per{span:g}s" for n, span in _windows_of(pacing))


@dataclass(frozen=True)
class Sharing:
    """Where budgets are kept: this machine's files (no `url`), or Redis (`url`, shared by every
    host), with its own budget per host for the providers in `per_host` (their limits count per IP)."""

    url: str | None = None
    per_host: frozenset[str] = frozenset()
    host: str | None = None
    """This host's name in per-host keys (default: the host name)."""


def configured_sharing() -> Sharing:
    """Config `pacing_url` and `pacing_per_host` (or their environment variables)."""
    from ktrdr_collect.config import load_settings

    values = load_settings().values
    per_host = frozenset(n for n in str(values.get("pacing_per_host") or "").split(",") if n)
    return Sharing(url=values.get("pacing_url") or None, per_host=per_host)


def pacer_for(provider_name: str, rate: float | None, windows: Sequence[Window] | None = None,
              folder: Path | None = None, default: Pacing | None = None,
              clock: Callable[[], float] = time.time, *, sharing: Sharing | None = None,
              credential: str = "") -> Pacer | None:
    """The pacer for this pacing (None: no limit): machine-wide in a file under home (or `folder`),
    or across hosts in Redis when `sharing` (default: the config's, unless `folder` is given) has a
    URL. `default` is the provider's own (`rate_limit`, `rate_windows`): another pacing gets its own
    log (see `log_name`). `credential` identifies the account (a hash, see `redis_pacing.credential_id`)."""
    if windows is None and not rate:
        return None
    name = log_name(provider_name, (rate, windows), default)
    spacing = 0.0 if windows is not None else 1.0 / rate  # type: ignore[operator]
    windows = list(windows) if windows is not None else windows_for_rate(rate)  # type: ignore[arg-type]
    if sharing is None and folder is None:
        sharing = configured_sharing()
    if sharing is not None and sharing.url:
        from ktrdr_collect.providers import redis_pacing

        host = (sharing.host or redis_pacing.this_host()) if provider_name in sharing.per_host else None
        key = redis_pacing.budget_key(name, credential, host)
        return redis_pacing.RedisPacer(sharing.url, key, windows, spacing=spacing)
    path = (folder or paths.shared_dir() / "pacing") / f"{name}.json"
    return SharedPacer(path, windows, clock=clock, spacing=spacing)
