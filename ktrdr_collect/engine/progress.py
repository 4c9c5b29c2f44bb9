"""Progress of a batch: one mutator (ProgressTracker) and read-only snapshots."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from ktrdr_collect.engine.eta import (
    RequestRate,
    ServiceTime,
    estimate_remaining_requests,
    eta_seconds,
    pool_seconds,
)

STAGES = (
    "validating", "head_timestamp", "loading_local", "analyzing_gaps",
    "segmenting", "fetching", "waiting", "merging", "saving", "done",
)
"""`waiting`: for a range another job has claimed (storage/claims.py); `waiting_for` says whose."""
FINISHED = ("completed", "failed")


@dataclass(frozen=True)
class SymbolProgress:
    symbol: str
    status: str = "pending"  # pending | running | completed | failed | cancelled
    stage: str = "validating"
    segments_done: int = 0
    segments_total: int = 0
    candles: int = 0
    requests: int = 0
    error: str | None = None
    planned: bool = False
    waiting_for: str | None = None
    """While `stage` is `waiting`: the label of the claim's owner (a job id), opaque here."""

    @property
    def fraction(self) -> float:
        if self.status in FINISHED:
            return 1.0
        if not self.segments_total:
            return 0.0
        return self.segments_done / self.segments_total


@dataclass(frozen=True)
class BatchSnapshot:
    symbols: tuple[SymbolProgress, ...]
    requests: int
    throttled: int
    errors_count: int
    candles: int
    elapsed_s: float
    eta_s: float | None
    rate_symbols_per_s: float
    rate_candles_per_s: float

    @property
    def total(self) -> int:
        return len(self.symbols)

    @property
    def completed(self) -> int:
        return sum(1 for s in self.symbols if s.status == "completed")

    @property
    def failed(self) -> int:
        return sum(1 for s in self.symbols if s.status == "failed")

    @property
    def finished(self) -> int:
        return sum(1 for s in self.symbols if s.status in FINISHED)

    @property
    def current(self) -> list[str]:
        return [s.symbol for s in self.symbols if s.status == "running"]

    @property
    def percent(self) -> float:
        if not self.symbols:
            return 100.0
        return round(100.0 * sum(s.fraction for s in self.symbols) / len(self.symbols), 2)


@dataclass(frozen=True)
class Summary:
    """A BatchSnapshot without its symbols (the same names): what `ProgressTracker.summary()` gives
    in O(running symbols), however many symbols the batch has."""

    total: int
    completed: int
    failed: int
    percent: float
    current: list[str]
    requests: int
    throttled: int
    errors_count: int
    candles: int
    elapsed_s: float
    eta_s: float | None
    rate_symbols_per_s: float
    rate_candles_per_s: float


def _partial(sp: SymbolProgress) -> bool:
    """Whether a symbol's done fraction is strictly between 0 and 1 (it counts in `percent`)."""
    return sp.status not in FINISHED and sp.segments_total > 0 and sp.segments_done > 0


@dataclass(frozen=True)
class ProcessingProgress:
    """What a `progress_callback` receives."""

    total_symbols: int
    completed_symbols: int
    current_symbol: str | None
    errors_count: int
    elapsed_time_ms: float
    estimated_remaining_ms: float | None

    @property
    def percentage(self) -> float:
        if self.total_symbols == 0:
            return 100.0
        return 100.0 * self.completed_symbols / self.total_symbols


@dataclass
class Totals:
    """Counters carried over from an earlier run of the same job (resume)."""

    requests: int = 0
    throttled: int = 0
    errors_count: int = 0
    candles: int = 0
    elapsed_s: float = 0.0


class ProgressTracker:
    """Thread-safe progress of one batch. Workers mutate; anyone may take a snapshot.

    Aggregates (finished count, requests left, unplanned symbols, the percent's parts) are kept
    incrementally so that `progress()` and `summary()` cost O(running symbols), however many symbols
    there are; `snapshot()` is O(symbols), and `drain()` gives the symbols changed since its last
    call (the state writer re-encodes only those). The ETA is described in docs/eta.md.
    """

    def __init__(
        self,
        symbols: Iterable[str | SymbolProgress],
        clock: Callable[[], float] = time.monotonic,
        rate_limit: float | None = None,
        carried: Totals | None = None,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._version = 0
        self._symbols: dict[str, SymbolProgress] = {}
        for item in symbols:
            sp = item if isinstance(item, SymbolProgress) else SymbolProgress(item)
            self._symbols[sp.symbol] = sp
        self._index = {symbol: i for i, symbol in enumerate(self._symbols)}
        self._completed = sum(1 for sp in self._symbols.values() if sp.status == "completed")
        self._failed = sum(1 for sp in self._symbols.values() if sp.status == "failed")
        self._current = {sp.symbol for sp in self._symbols.values() if sp.status == "running"}
        self._partial = {sp.symbol for sp in self._symbols.values() if _partial(sp)}
        self._dirty: set[str] = set()  # changed since the last drain()
        self._carried = carried or Totals()
        self._requests = self._throttled = self._errors = self._candles = 0
        self._finished_here = 0
        self._finished = sum(1 for sp in self._symbols.values() if sp.status in FINISHED)
        self._running: dict[str, None] = {}
        self._open = sum(1 for sp in self._symbols.values() if sp.status not in (*FINISHED, "cancelled"))
        self._workers = 1  # the most symbols seen running at once: the pool's size
        self._left = 0  # planned requests not yet done, over unfinished symbols
        self._planned_count = 0
        self._planned_sum = 0
        self._unplanned = sum(1 for sp in self._symbols.values() if sp.status not in FINISHED)
        self._started: float | None = None
        self._paused_at: float | None = None
        self._paused_total = 0.0
        self._rate = RequestRate(limit=rate_limit)
        self._service = ServiceTime()
        self._inflight: dict[str, float] = {}  # symbol -> active time its current request started

    # -- time ------------------------------------------------------------------------------
    def _active(self, now: float) -> float:
        if self._started is None:
            return 0.0
        paused = self._paused_total + (now - self._paused_at if self._paused_at is not None else 0.0)
        return max(0.0, now - self._started - paused)

    def start(self) -> None:
        with self._lock:
            if self._started is None:
                self._started = self._clock()
            self._bump()

    def pause(self) -> None:
        with self._lock:
            if self._paused_at is None:
                self._paused_at = self._clock()
            self._bump()

    def resume(self) -> None:
        with self._lock:
            if self._paused_at is not None:
                self._paused_total += self._clock() - self._paused_at
                self._paused_at = None
            self._bump()

    # -- mutations -------------------------------------------------------------------------
    def _bump(self) -> None:
        self._version += 1
        self._changed.notify_all()

    def notify(self) -> None:
        """Wake anyone waiting for a change (used to stop observers)."""
        with self._lock:
            self._bump()

    def _set(self, symbol: str, **changes: object) -> SymbolProgress:
        old = self._symbols[symbol]
        new = self._symbols[symbol] = replace(old, **changes)  # type: ignore[arg-type]
        self._dirty.add(symbol)
        if new.status != old.status:
            self._completed += (new.status == "completed") - (old.status == "completed")
            self._failed += (new.status == "failed") - (old.status == "failed")
            if new.status == "running":
                self._current.add(symbol)
            else:
                self._current.discard(symbol)
        if _partial(new):
            self._partial.add(symbol)
        else:
            self._partial.discard(symbol)
        return old

    def symbol_started(self, symbol: str) -> None:
        with self._lock:
            self._set(symbol, status="running", stage="validating")
            self._running[symbol] = None
            self._workers = max(self._workers, len(self._running))
            self._bump()

    def stage(self, symbol: str, stage: str) -> None:
        with self._lock:
            self._set(symbol, stage=stage, waiting_for=None)
            self._bump()

    def waiting(self, symbol: str, owner: str) -> None:
        """The symbol waits for a range `owner` has claimed (stage `waiting`)."""
        with self._lock:
            self._set(symbol, stage="waiting", waiting_for=owner)
            self._bump()

    def planned(self, symbol: str, segments_total: int) -> None:
        with self._lock:
            old = self._set(symbol, segments_total=segments_total, segments_done=0, planned=True)
            if not old.planned:
                self._unplanned -= 1
                self._planned_count += 1
                self._planned_sum += segments_total
                self._left += segments_total
            self._bump()

    def request_made(self, symbol: str) -> None:
        with self._lock:
            self._requests += 1
            self._set(symbol, requests=self._symbols[symbol].requests + 1)
            self._inflight[symbol] = self._active(self._clock())
            self._bump()

    def request_failed(self, throttled: bool = False) -> None:
        with self._lock:
            if throttled:
                self._throttled += 1
            else:
                self._errors += 1
            self._bump()

    def segment_done(self, symbol: str, candles: int, requested: bool = True) -> None:
        with self._lock:
            sp = self._symbols[symbol]
            self._set(symbol, segments_done=sp.segments_done + 1, candles=sp.candles + candles)
            self._left -= 1
            self._candles += candles
            if requested:
                self._request_done(symbol, self._active(self._clock()))
            self._bump()

    def candles_stored(self, symbol: str, candles: int) -> None:
        """Candles written later than their segment was counted done (batched writes)."""
        with self._lock:
            self._set(symbol, candles=self._symbols[symbol].candles + candles)
            self._candles += candles
            self._bump()

    def symbol_finished(self, symbol: str, status: str, error: str | None = None) -> None:
        with self._lock:
            sp = self._symbols[symbol]
            if sp.status in FINISHED or sp.status == "cancelled":
                return
            stage = "done" if status == "completed" else sp.stage
            self._set(symbol, status=status, stage=stage, error=error)
            self._running.pop(symbol, None)
            self._inflight.pop(symbol, None)
            self._open -= 1
            if sp.planned:
                self._left -= max(0, sp.segments_total - sp.segments_done)
            else:
                self._unplanned -= 1
            if status in FINISHED:
                self._finished += 1
                self._finished_here += 1
            if status == "failed" and sp.requests == 0:
                self._errors += 1  # failed without a failed request (e.g. unknown symbol)
            self._bump()

    # -- reading ---------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self._version

    def wait_for_change(self, version: int, timeout: float) -> int:
        with self._changed:
            self._changed.wait_for(lambda: self._version != version, timeout)
            return self._version

    def snapshot_symbol(self, symbol: str) -> SymbolProgress:
        with self._lock:
            return self._symbols[symbol]

    # -- ETA (docs/eta.md) -----------------------------------------------------------------
    def _request_done(self, symbol: str, active: float) -> None:
        started = self._inflight.pop(symbol, None)
        if started is not None:
            self._service.record(active - started)
        self._rate.record(active, self._rate.count + 1 + self._inflight_work(active))

    def _inflight_work(self, active: float) -> float:
        """The share already done of the requests in flight (in requests)."""
        return sum(self._service.share_done(active - t) for t in self._inflight.values())

    def _remaining_requests(self) -> float | None:
        totals = [self._planned_sum / self._planned_count] if self._planned_count else []
        return estimate_remaining_requests(self._left, self._unplanned, totals)

    def _running_left(self, active: float, unplanned_size: float) -> list[float]:
        """Requests each running symbol still has to make (the share done of one in flight off)."""
        left = []
        for symbol in self._running:
            sp = self._symbols[symbol]
            if not sp.planned:
                left.append(unplanned_size)
                continue
            started = self._inflight.get(symbol)
            done = 0.0 if started is None else self._service.share_done(active - started)
            left.append(max(0.0, sp.segments_total - sp.segments_done - done))
        return left

    def _eta(self, active: float) -> float | None:
        if self._unplanned == 0 and self._left <= 0:
            return 0.0
        remaining = self._remaining_requests()
        if remaining is None:
            return None
        inflight = self._inflight_work(active)
        rate = self._rate.rate(active, self._rate.count + inflight)
        bulk = eta_seconds(remaining - inflight, rate)
        if not bulk or not rate:
            return bulk
        mean_size = self._planned_sum / self._planned_count if self._planned_count else 0.0
        running = self._running_left(active, mean_size)
        pending = max(0, self._open - len(running))
        pool = pool_seconds(running, pending, max(0.0, remaining - inflight - sum(running)), self._workers,
                            self._own_step(rate), self._workers / rate)
        return round(max(bulk, pool), 3)

    def _own_step(self, rate: float) -> float:
        """Seconds between the requests of one symbol: the mean request time (no less than the
        limit allows), or the pool's share of the rate until a request has been timed."""
        own, limit = self._service.mean, self._rate.limit
        if own is None:
            return self._workers / rate
        return max(own, 1.0 / limit) if limit else own

    def remaining_requests(self) -> float | None:
        """Provider requests still to make, with an estimate for symbols not yet planned."""
        with self._lock:
            return self._remaining_requests()

    def progress(self) -> ProcessingProgress:
        """O(1): what a progress callback gets."""
        with self._lock:
            active = self._active(self._clock())
            eta = self._eta(active)
            return ProcessingProgress(
                total_symbols=len(self._symbols),
                completed_symbols=self._finished,
                current_symbol=next(iter(self._running), None),
                errors_count=self._carried.errors_count + self._errors,
                elapsed_time_ms=(self._carried.elapsed_s + active) * 1000,
                estimated_remaining_ms=None if eta is None else eta * 1000,
            )

    def _counters(self) -> dict[str, object]:
        active = self._active(self._clock())
        return {
            "requests": self._carried.requests + self._requests,
            "throttled": self._carried.throttled + self._throttled,
            "errors_count": self._carried.errors_count + self._errors,
            "candles": self._carried.candles + self._candles,
            "elapsed_s": round(self._carried.elapsed_s + active, 3),
            "eta_s": self._eta(active),
            "rate_symbols_per_s": round(self._finished_here / active, 4) if active > 0 else 0.0,
            "rate_candles_per_s": round(self._candles / active, 2) if active > 0 else 0.0,
        }

    def snapshot(self) -> BatchSnapshot:
        with self._lock:
            return BatchSnapshot(symbols=tuple(self._symbols.values()), **self._counters())  # type: ignore[arg-type]

    def _summary(self) -> Summary:
        n = len(self._symbols)
        done = self._completed + self._failed + sum(self._symbols[s].fraction for s in self._partial)
        return Summary(
            total=n, completed=self._completed, failed=self._failed,
            percent=round(100.0 * done / n, 2) if n else 100.0,
            current=sorted(self._current, key=self._index.__getitem__),
            **self._counters(),  # type: ignore[arg-type]
        )

    def summary(self) -> Summary:
        """The snapshot's aggregates without its symbols, in O(running symbols)."""
        with self._lock:
            return self._summary()

    def drain(self, everything: bool = False) -> tuple[Summary, list[SymbolProgress]]:
        """The summary and, taken at the same instant, the symbols changed since the last drain
        (every symbol, in order, if `everything`). For one consumer: the job's state writer."""
        with self._lock:
            if everything:
                changed = list(self._symbols.values())
            else:
                changed = [self._symbols[s] for s in self._dirty]
            self._dirty.clear()
            return self._summary(), changed
