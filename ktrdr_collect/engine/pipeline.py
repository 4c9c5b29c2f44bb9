"""One symbol's way through the stages: validate, plan the missing segments, fetch, store."""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TypeVar

from ktrdr_collect.engine.cancellation import CancellationToken, PauseGate
from ktrdr_collect.engine.planner import plan_series
from ktrdr_collect.engine.progress import ProgressTracker
from ktrdr_collect.engine.restate import Restater
from ktrdr_collect.providers.base import (
    Bar,
    PermanentError,
    Provider,
    ProviderError,
    RateLimitedError,
    TransientError,
    UnknownSymbolError,
)
from ktrdr_collect.providers.pacing import SharedPacer
from ktrdr_collect.storage.claims import Claim, ClaimBook, SeriesClaims
from ktrdr_collect.storage.gaps import merge_intervals, subtract
from ktrdr_collect.storage.refresh import replace_ranges
from ktrdr_collect.storage.restamp import restamp_series
from ktrdr_collect.storage.store import Store
from ktrdr_collect.storage.timeframes import DAY, format_ts, timeframe_seconds

log = logging.getLogger("ktrdr_collect.engine")
T = TypeVar("T")


CLAIM_POLL_S = 0.02
"""How often a symbol waiting for another job's claim looks whether it is released."""

WRITE_BEHIND_SHARE = 0.25
"""An appended segment is handed to the writer (ctx.writer) when the series' last write took more
than this share of its last request (a slow disk, a big file's fsync): the overlap then saves a
fifth of the time or more. Below it the worker writes itself: the hand-off costs CPU (thread
wake-ups and GIL hand-overs: +30 % CPU per bar in `bench/run peer`, where writes take ~7 % of a
request) for a few per cent of wall time."""

PREPEND_BATCH_BARS = 100_000
"""Segments that land before stored data cost a rewrite of the file, so they are written in
batches of up to this many bars (appends after the last stored bar are written one by one)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Transient errors: capped exponential backoff with jitter. Rate limits: as the provider says."""

    attempts: int = 5
    base_s: float = 0.2
    cap_s: float = 10.0
    max_throttled: int = 200
    max_throttle_wait_s: float = 900.0
    """Most time one symbol spends waiting out rate limits before it fails (config
    `max_rate_limit_wait`): a provider that keeps refusing never holds a symbol for long."""

    def backoff(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


@dataclass
class SymbolResult:
    symbol: str
    status: str  # completed | failed | cancelled
    candles: int = 0
    requests: int = 0
    segments_done: int = 0
    segments_total: int = 0
    error: str | None = None
    elapsed_s: float = 0.0
    timeframe: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "completed"


@dataclass
class BatchContext:
    provider: Provider
    store: Store
    timeframe: str
    start: int | None  # None: the symbol's first available bar
    end: int
    tracker: ProgressTracker
    token: CancellationToken
    gate: PauseGate
    pacer: SharedPacer | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    now: Callable[[], float] = time.time
    on_stored: Callable[[str, tuple[int, int], int], None] | None = None
    """Called with (symbol, range, bars) just before bars are written: a job's journal of the
    ranges it stored, from which its counts are rebuilt after a crash (see jobs/journal.py)."""
    claims: ClaimBook | None = None
    """Where ranges are claimed before they are fetched (None: no claims, the job fetches alone)."""
    refresh: bool = False
    """Fetch the whole window again, stored or not, and replace what is stored there (`start --refresh`)."""
    writer: Executor | None = None
    """Where a symbol's appended segment is written while its next request is in flight (the
    engine's thread pool gives one thread per worker, so W workers keep W requests in flight);
    None: each write happens in the worker before its next request."""


@dataclass
class Batch:
    """Consecutive fetched segments waiting to be written together."""

    ranges: list[tuple[int, int]] = field(default_factory=list)
    parts: list[Sequence[Bar]] = field(default_factory=list)
    count: int = 0

    def continues(self, segment: tuple[int, int]) -> bool:
        return not self.ranges or self.ranges[-1][1] == segment[0]

    def add(self, segment: tuple[int, int], bars: Sequence[Bar]) -> None:
        self.ranges.append(segment)
        self.parts.append(bars)
        self.count += len(bars)

    @property
    def bars(self) -> Sequence[Bar]:
        """The batch's bars in one piece: columns joined when every part is columns."""
        from ktrdr_collect.storage.columns import Columns

        if all(isinstance(part, Columns) for part in self.parts):
            return Columns.concat(self.parts)  # type: ignore[arg-type]
        return [tuple(bar) for part in self.parts for bar in part]  # type: ignore[misc]

    def clear(self) -> None:
        self.ranges.clear()
        self.parts.clear()
        self.count = 0


class Attempt:
    """What a provider gets for one request: the job's cancellation, plus `mark_sent()` to say
    when the request really left (the pacer then counts it from that moment)."""

    def __init__(self, token: CancellationToken) -> None:
        self.token = token
        self.sent_at: float | None = None

    @property
    def is_cancelled(self) -> bool:
        return self.token.is_cancelled

    def wait(self, timeout: float) -> bool:
        return self.token.wait(timeout)

    def mark_sent(self) -> None:
        self.sent_at = time.time()


def run_of(claims: Sequence[Claim], first: Claim) -> tuple[int, int]:
    """The run of claims (overlapping or touching, whoever holds them) that holds `first`."""
    runs = merge_intervals((c.start, c.end) for c in claims)
    return next(((lo, hi) for lo, hi in runs if lo <= first.start < hi), (first.start, first.end))


def worth_deferring(run: tuple[int, int], segment: tuple[int, int]) -> bool:
    """Whether a segment blocked by a run of claims is better put off than waited for: when the
    run is longer than three of our segments (a batch of another job's, a long range), waiting
    would idle us for long; a run of one or two segments is another job one request ahead of us
    on the same path (the segment it is writing and the one it is fetching: `_write_behind`), and
    trailing it (rather than skipping ahead of it) keeps both jobs' writes in order."""
    return run[1] - run[0] > 3 * (segment[1] - segment[0])


class SymbolFailed(Exception):
    pass


class Cancelled(Exception):
    pass


def clean_bars(bars: Sequence[Bar], start: int, end: int) -> Sequence[Bar]:
    """Bars inside [start, end), sorted, one per timestamp; garbage raises PermanentError. Columns
    (storage.columns) are checked column-wise and stay columns."""
    # loaded by whoever made columns; while another thread is still importing it the module has
    # no Columns yet, and then these bars cannot be Columns either
    column_type = getattr(sys.modules.get("ktrdr_collect.storage.columns"), "Columns", None)
    if column_type is not None and isinstance(bars, column_type):
        if not bars.all_finite():
            bad = next(bar for bar in bars if not math.isfinite(sum(bar[1:])))
            raise PermanentError(f"provider returned non-numeric values in {bad!r}"[:200])
        return bars.window(start, end).sorted_unique()
    by_ts: dict[int, Bar] = {}
    ordered = True
    last = -(2**63)
    for bar in bars:
        try:
            ts, o, h, low, c, v = bar
            # one sum checks all five: a string raises TypeError, a NaN or infinity is not finite
            finite = math.isfinite(o + h + low + c + v)
        except (TypeError, ValueError):
            raise PermanentError(f"provider returned a malformed bar: {bar!r}"[:200]) from None
        if not finite or isinstance(ts, bool) or not isinstance(ts, int):
            raise PermanentError(f"provider returned non-numeric values in {bar!r}"[:200])
        if start <= ts < end:
            if ts <= last:
                ordered = False
            last = ts
            by_ts[ts] = bar if type(bar) is tuple else tuple(bar)  # type: ignore[assignment]
    if ordered:
        return list(by_ts.values())
    return [by_ts[ts] for ts in sorted(by_ts)]


class SymbolPipeline:
    def __init__(self, ctx: BatchContext, symbol: str) -> None:
        self.ctx = ctx
        self.symbol = symbol
        self.track = ctx.tracker
        self.edge: int | None = None
        """The end of the window when the publication edge cut it (set while planning)."""
        self.claims: SeriesClaims | None = None
        """This symbol's claims on its series (storage/claims.py), while fetching."""
        self.waited = False
        """Whether it has waited for another job's claim yet (the first wait is logged as info)."""
        self.restater = Restater(ctx.provider, ctx.store, ctx.timeframe, symbol, self._fetch,  # type: ignore[arg-type]
                                 lambda n: self.track.candles_stored(symbol, n), ctx.now)
        """Corporate actions seen while fetching: stored, and the series restated, before each write."""
        self._stage_before_redis: str | None = None
        """The stage to go back to after waiting for an unreachable pacing Redis."""
        self._writing: tuple[Future[int], tuple[int, int]] | None = None
        """The appended segment being written by ctx.writer (and its claimed range), if any."""
        self._request_s: float | None = None
        """How long the last provider request took (seconds)."""
        self._write_s: float | None = None
        """How long the last append took (seconds; set by the writer's thread, read once settled)."""

    def _stage(self, stage: str) -> None:
        self.track.stage(self.symbol, stage)

    def run(self) -> SymbolResult:
        started = time.monotonic()
        self.track.symbol_started(self.symbol)
        status, error = "completed", None
        try:
            self._run()
        except Cancelled:
            status = "cancelled"
        except SymbolFailed as e:
            status, error = "failed", str(e)
        except OSError as e:
            status, error = "failed", f"cannot store data: {e.strerror or e}"
        except Exception as e:  # a provider or store bug must not take the batch down
            log.exception("%s: unexpected error", self.symbol)
            status, error = "failed", f"{type(e).__name__}: {e}"
        if status == "failed":  # the result reports it; a job's runner logs it (once) as an error
            log.debug("%s: failed: %s", self.symbol, error)
        self.track.symbol_finished(self.symbol, status, error)
        sp = self.track.snapshot_symbol(self.symbol)
        return SymbolResult(
            symbol=self.symbol, status=status, candles=sp.candles, requests=sp.requests,
            segments_done=sp.segments_done, segments_total=sp.segments_total, error=error,
            elapsed_s=round(time.monotonic() - started, 3), timeframe=self.ctx.timeframe,
        )

    def _run(self) -> None:
        ctx, symbol = self.ctx, self.symbol
        self._check_cancel()
        self._call(lambda: ctx.provider.validate(symbol))
        self._stage("head_timestamp")
        start = ctx.start
        if start is None:
            provider = ctx.provider
            start = self._request(lambda attempt: provider.head_timestamp(symbol, ctx.timeframe, attempt),
                                  paced=provider.head_timestamp_is_request)
        self._stage("loading_local")
        self._convert_legacy_stamps()
        self._stage("analyzing_gaps")
        plan = plan_series(ctx.provider, ctx.store, ctx.timeframe, symbol, start, ctx.end, ctx.now(),
                           refresh=ctx.refresh)
        self.edge = plan.edge
        self._stage("segmenting")
        segments = plan.segments
        for gap in plan.empty:  # no bars can exist there (weekend, night, holiday on the symbol's calendar)
            ctx.store.write(ctx.provider.name, ctx.timeframe, symbol, [], gap)
        self.track.planned(symbol, len(segments))
        if ctx.refresh:
            self._refresh(segments)
            return
        if ctx.claims is not None:
            self.claims = ctx.claims.series(ctx.store, ctx.provider.name, ctx.timeframe, symbol)
        self._fetch_and_store(segments)

    def _refresh(self, segments: list[tuple[int, int]]) -> None:
        """Fetch every segment again and replace the stored bars there (storage/refresh.py), in
        batches of up to PREPEND_BATCH_BARS bars: each batch is one swap of the data file."""
        batch = Batch()
        try:
            for segment in segments:
                bars = self._fetch(segment)
                covered = self._covered(segment, bars)
                if covered is not None:
                    batch.add(covered, bars[:bisect_left(bars, covered[1], key=itemgetter(0))])
                self.track.segment_done(self.symbol, 0)
                if batch.count >= PREPEND_BATCH_BARS:
                    self._replace(batch)
        finally:
            self._replace(batch)  # what was fetched is kept, even when cancelled or failing

    def _replace(self, batch: Batch) -> None:
        if not batch.ranges:
            return
        ctx = self.ctx
        self._stage("merging")
        whole = (batch.ranges[0][0], batch.ranges[-1][1])
        self.restater.before_write()
        if ctx.on_stored is not None:
            ctx.on_stored(self.symbol, whole, batch.count)
        changed = replace_ranges(ctx.store, ctx.provider.name, ctx.timeframe, self.symbol, batch.bars, batch.ranges)
        if changed:
            log.info("%s: refreshed %s, %d bar%s changed", self.symbol, ctx.timeframe, changed,
                     "" if changed == 1 else "s")
        self.track.candles_stored(self.symbol, changed)
        batch.clear()

    def _convert_legacy_stamps(self) -> None:
        """Daily and weekly files written before bars were stamped at 00:00Z of their session date
        are converted the first time a job touches them (see storage/restamp.py)."""
        ctx = self.ctx
        if ctx.timeframe not in ("1d", "1w") or not ctx.provider.legacy_daily_stamps:
            return
        last = ctx.store.last_ts(ctx.provider.name, ctx.timeframe, self.symbol)
        if last is None or last % DAY == 0:
            return
        outcome = restamp_series(
            ctx.store, ctx.provider.name, ctx.timeframe, self.symbol,
            lambda ts: ctx.provider.legacy_day(self.symbol, ctx.timeframe, ts))
        log.warning("%s: %s", self.symbol, outcome)

    def _covered(self, segment: tuple[int, int], bars: Sequence[Bar]) -> tuple[int, int] | None:
        """What a fetched segment lets us record as fetched. A segment that reaches the publication
        edge only counts up to the end of its last bar: the provider may not have published the rest
        yet, and an empty answer there records nothing (a later run asks again)."""
        if self.edge is None or segment[1] < self.edge:
            return segment
        if not bars:
            return None
        return segment[0], min(segment[1], bars[-1][0] + timeframe_seconds(self.ctx.timeframe))

    def _fetch_and_store(self, segments: list[tuple[int, int]]) -> None:
        """Each segment in turn; one inside a long run of another job's claims is put off until the
        end (`worth_deferring`), so that both jobs work meanwhile."""
        batch = Batch()
        try:
            later = [segment for segment in segments if not self._segment(segment, batch, may_defer=True)]
            for segment in later:
                self._segment(segment, batch, may_defer=False)
        finally:
            try:
                self._flush(batch)  # what was fetched is kept, even when cancelled or failing
            finally:
                if self.claims is not None:
                    self.claims.release_all()

    def _segment(self, segment: tuple[int, int], batch: Batch, may_defer: bool) -> bool:
        """Fetch and store what is missing of `segment`; False if it was put off."""
        self._stage("fetching")
        pieces, deferred = self._claim_missing(segment, batch, may_defer)
        while pieces and self.claims is not None and self.ctx.gate.is_paused:
            self._step_aside(pieces, batch)
            pieces, deferred = self._claim_missing(segment, batch, may_defer)
        if pieces != [segment]:
            pieces = self._drop_sessionless(pieces)
        if deferred:  # its free parts now, the rest later
            self.track.candles_stored(self.symbol, sum(self._fetch_piece(piece, batch) for piece in pieces))
            return False
        if not pieces:  # stored meanwhile (by another job, or by one we waited for)
            self.track.segment_done(self.symbol, 0, requested=False)
            return True
        self.track.segment_done(self.symbol, sum(self._fetch_piece(piece, batch) for piece in pieces))
        return True

    def _drop_sessionless(self, pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Parts of a segment (what others left of it) where the symbol's calendar has no bar are
        recorded as fetched without asking, like such gaps when planning."""
        ctx = self.ctx
        calendar = ctx.provider.calendar_for(self.symbol)
        self._settle()
        kept = []
        for piece in pieces:
            first = calendar.first_bar(ctx.timeframe, piece[0])
            if first is None or first >= piece[1]:
                ctx.store.write(ctx.provider.name, ctx.timeframe, self.symbol, [], piece)
                self._release(piece)
            else:
                kept.append(piece)
        return kept

    def _step_aside(self, pieces: list[tuple[int, int]], batch: Batch) -> None:
        """Paused: store what we hold and release every claim before waiting at the gate, so that
        other jobs are not held up by a paused one; claim again once resumed."""
        self._flush(batch)
        for piece in pieces:
            self._release(piece)
        if not self.ctx.gate.wait_open(self.ctx.token):
            raise Cancelled

    def _fetch_piece(self, piece: tuple[int, int], batch: Batch) -> int:
        """Fetch one claimed missing range and store it (or batch it); the rows stored now."""
        ctx = self.ctx
        bars = self._fetch(piece)
        covered = self._covered(piece, bars)
        if covered is None:  # nothing published yet at the edge: record nothing
            self._release(piece)
            return 0
        if covered != piece:
            self._flush(batch)
            return self._store_released(bars, covered, piece)
        # Another job may append. A write of ours still going (`_write_behind`) is of an earlier
        # range: the value may be older, never later, and this piece still goes after it.
        last = ctx.store.last_ts(ctx.provider.name, ctx.timeframe, self.symbol)
        # Lands before stored data: batch it. Stored bars inside the piece only (a crash between a
        # write's bars and its record left them) are no reason to: it is stored now, so that a
        # crash loses no more than the request in flight and the write behind it.
        if last is not None and piece[1] <= last:
            if not batch.continues(piece):
                self._flush(batch)
            batch.add(piece, bars)
            if batch.count >= PREPEND_BATCH_BARS:
                self._flush(batch)
            return 0
        self._flush(batch)
        self._stage("saving")
        return self._write_behind(bars, piece)

    def _write_behind(self, bars: Sequence[Bar], piece: tuple[int, int]) -> int:
        """Append a fetched piece: when writes are slow next to requests (`WRITE_BEHIND_SHARE`),
        by ctx.writer while the worker goes on to its next request (the rows are counted when it
        is settled); else now. Either way the actions and the journal come first, in this thread,
        as for every write (see `_store`)."""
        ctx = self.ctx
        self._settle()
        if ctx.writer is None or not self._writes_are_slow():
            started = time.monotonic()
            stored = self._store_released(bars, piece, piece)
            self._write_s = time.monotonic() - started
            return stored
        try:
            self.restater.before_write()
            if ctx.on_stored is not None:
                ctx.on_stored(self.symbol, piece, len(bars))
            future = ctx.writer.submit(self._timed_write, bars, piece)
        except BaseException:
            self._release(piece)
            raise
        self._writing = future, piece
        return 0

    def _writes_are_slow(self) -> bool:
        if self._write_s is None or self._request_s is None:
            return False
        return self._write_s > WRITE_BEHIND_SHARE * self._request_s

    def _timed_write(self, bars: Sequence[Bar], piece: tuple[int, int]) -> int:
        """The writer thread's part of `_write_behind`."""
        ctx = self.ctx
        started = time.monotonic()
        stored = ctx.store.write(ctx.provider.name, ctx.timeframe, self.symbol, bars, piece)
        self._write_s = time.monotonic() - started
        return stored

    def _settle(self) -> None:
        """Wait for the write `_write_behind` left going, count its rows and release its claim;
        its error (a full disk) is raised here. Every other write, and every wait for another
        job's claim, settles first: a series' writes stay in order and one at a time."""
        if self._writing is None:
            return
        future, piece = self._writing
        self._writing = None
        try:
            self.track.candles_stored(self.symbol, future.result())
        finally:
            self._release(piece)

    def _flush(self, batch: Batch) -> None:
        self._settle()
        if not batch.ranges:
            return
        self._stage("merging")
        whole = (batch.ranges[0][0], batch.ranges[-1][1])
        self.track.candles_stored(self.symbol, self._store_released(batch.bars, whole, whole))
        batch.clear()

    def _store_released(self, bars: Sequence[Bar], covered: tuple[int, int], claimed: tuple[int, int]) -> int:
        """Store, then release the claims inside `claimed` (coverage first: see storage/claims.py)."""
        self._settle()
        try:
            return self._store(bars, covered)
        finally:
            self._release(claimed)

    def _release(self, claimed: tuple[int, int]) -> None:
        if self.claims is not None:
            self.claims.release(*claimed)

    def _coverage(self) -> list[tuple[int, int]]:
        ctx = self.ctx
        return ctx.store.coverage(ctx.provider.name, ctx.timeframe, self.symbol)

    def _claim_missing(self, segment: tuple[int, int], batch: Batch,
                       may_defer: bool) -> tuple[list[tuple[int, int]], bool]:
        """The parts of `segment` not stored yet, claimed by us, and whether the segment is put off.

        Where another job holds a claim on any of them, wait until it is released and look again:
        it has usually stored them by then (a job that failed or died leaves them to us). With
        `may_defer`, a segment better put off (`worth_deferring`) gives only its unclaimed parts
        now, and is put off.

        No deadlock: a series waits only for a claim that starts at or after the end of every
        claim it holds (its pending batch); otherwise it first writes the batch, releasing them.
        Along any chain of waits the claims then rise strictly, so the chain cannot close into a
        cycle, and a series trailing another one keeps its batch (one rewrite, not one per wait)."""
        claims = self.claims
        if claims is None:
            return subtract(segment, self._coverage()), False
        while True:
            with claims.locked():
                others = claims.others()  # claims first, coverage second (storage/claims.py)
                missing = subtract(segment, [*self._coverage(), *claims.held])  # ours: in our batch
                blocking = next((c for c in others if c.overlaps(missing)), None)
                if blocking is None:
                    claims.take(missing)
                    return missing, False
                if may_defer and worth_deferring(run_of(others, blocking), segment):
                    taken = [(c.start, c.end) for c in others]
                    free = [piece for gap in missing for piece in subtract(gap, taken)]
                    claims.take(free)
                    return free, True
            if any(hi > blocking.start for _, hi in claims.held):
                self._flush(batch)  # see `_claim_missing`: never wait for a claim below one we hold
            self._wait_for(blocking)

    def _wait_for(self, claim: Claim) -> None:
        """Wait until `claim` is released (its job stored the range, stopped or died); cancel
        stops the wait at once."""
        owner = claim.owner()
        self.track.waiting(self.symbol, owner)
        log.log(logging.DEBUG if self.waited else logging.INFO, "%s: waiting for %s, which is fetching %s to %s",
                self.symbol, owner, format_ts(claim.start), format_ts(claim.end))
        self.waited = True
        with claim.watch() as watch:
            while not watch.released():
                if self.ctx.token.wait(CLAIM_POLL_S):
                    raise Cancelled
        self._stage("fetching")

    def _store(self, bars: Sequence[Bar], covered: tuple[int, int]) -> int:
        """Journal, then store; the rows the file gained or changed (what the job counts)."""
        ctx = self.ctx
        self.restater.before_write()
        if ctx.on_stored is not None:
            ctx.on_stored(self.symbol, covered, len(bars))
        return ctx.store.write(ctx.provider.name, ctx.timeframe, self.symbol, bars, covered)

    def _check_cancel(self) -> None:
        if self.ctx.token.is_cancelled:
            raise Cancelled

    def _call(self, fn: Callable[[], T]) -> T:
        """A provider call outside fetching (validate, head timestamp): classified errors."""
        try:
            return fn()
        except UnknownSymbolError as e:
            raise SymbolFailed(str(e)) from None
        except ProviderError as e:
            raise SymbolFailed(str(e)) from None

    def _wait_turn(self) -> float | None:
        """Block while paused, then wait for a pacing slot (returned); raise Cancelled when cancelled."""
        ctx = self.ctx
        while True:
            if ctx.gate.is_paused:  # what is being written is stored and counted before the pause
                self._settle()
            if not ctx.gate.wait_open(ctx.token):
                raise Cancelled
            if ctx.pacer is None:
                return None
            slot = ctx.pacer.wait_turn(self._pacing_sleep)
            if self._stage_before_redis is not None:  # it waited for Redis: back to work
                self._stage(self._stage_before_redis)
                self._stage_before_redis = None
            if slot is not None:
                if ctx.gate.is_paused or ctx.token.is_cancelled:
                    ctx.pacer.release(slot)
                    self._check_cancel()
                    continue
                return slot
            self._check_cancel()  # paused meanwhile: wait at the gate, then book again

    def _pacing_sleep(self, seconds: float) -> bool:
        """The pacer's wait; while its Redis is unreachable the series shows `waiting for Redis
        (pacing)` (providers/redis_pacing.py: no request goes out unpaced)."""
        self._settle()  # a wait: the write behind us is stored, counted and its claim released first
        if getattr(self.ctx.pacer, "waiting_for_redis", False) and self._stage_before_redis is None:
            self._stage_before_redis = self.track.snapshot_symbol(self.symbol).stage
            self.track.waiting(self.symbol, "Redis (pacing)")
        return self.ctx.gate.sleep(seconds, self.ctx.token)

    def _sleep(self, seconds: float) -> None:
        self._settle()
        if not self.ctx.gate.sleep(seconds, self.ctx.token):
            self._check_cancel()

    def _fetch(self, segment: tuple[int, int]) -> Sequence[Bar]:
        ctx, (start, end) = self.ctx, segment
        bars = self._request(
            lambda attempt: clean_bars(ctx.provider.fetch(self.symbol, ctx.timeframe, start, end, attempt), start, end)
        )
        self.restater.fetched_range(segment)
        return bars

    def _request(self, call: Callable[[Attempt], T], paced: bool = True) -> T:
        """One provider request, paced and counted, retried as its error class says."""
        ctx, symbol = self.ctx, self.symbol
        failures = throttles = 0
        waited = 0.0
        while True:
            slot = None
            if paced:
                slot = self._wait_turn()
                self.track.request_made(symbol)
            attempt = Attempt(ctx.token)
            try:
                try:
                    started = time.monotonic()
                    result = call(attempt)
                    self._request_s = time.monotonic() - started
                finally:
                    if slot is not None and ctx.pacer is not None and attempt.sent_at is not None:
                        ctx.pacer.correct(slot, attempt.sent_at)
                self._check_cancel()
                return result
            except RateLimitedError as e:
                self.track.request_failed(throttled=True)
                throttles += 1
                if throttles > ctx.retry.max_throttled:
                    raise SymbolFailed(f"rate limited {throttles} times: {e}") from None
                wait = e.retry_after if e.retry_after is not None else ctx.retry.backoff(throttles)
                if waited + wait > ctx.retry.max_throttle_wait_s:
                    raise SymbolFailed(
                        f"{e}; still refused after waiting {waited:.0f}s in total for rate limits "
                        f"({throttles} refusals), giving up") from None
                waited += wait
                log.info("%s: throttled, waiting %.2fs: %s", symbol, wait, e)
                self._sleep(wait)
            except TransientError as e:
                self.track.request_failed()
                failures += 1
                if failures >= ctx.retry.attempts:
                    raise SymbolFailed(f"{e} (gave up after {failures} attempts)") from None
                wait = ctx.retry.backoff(failures)
                log.info("%s: retry %d in %.2fs: %s", symbol, failures, wait, e)
                self._sleep(wait)
            except (UnknownSymbolError, PermanentError, ProviderError) as e:
                self.track.request_failed()
                raise SymbolFailed(str(e)) from None
