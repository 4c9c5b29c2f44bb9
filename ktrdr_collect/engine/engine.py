"""The thread-pool engine: the Python API and what every job runs."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime
from typing import Any

from ktrdr_collect.engine.cancellation import CancellationToken, PauseGate, ProcessingCancelledException
from ktrdr_collect.engine.dask_executor import executor_for
from ktrdr_collect.engine.pipeline import BatchContext, RetryPolicy, Store, SymbolPipeline, SymbolResult
from ktrdr_collect.engine.progress import FINISHED, ProcessingProgress, ProgressTracker
from ktrdr_collect.inputs import parse_datetime
from ktrdr_collect.providers.base import Provider
from ktrdr_collect.providers.pacing import Pacer, Sharing, configured_sharing, pacer_for, same_pacing
from ktrdr_collect.providers.redis_pacing import credential_of
from ktrdr_collect.storage.claims import ClaimBook

log = logging.getLogger("ktrdr_collect.engine")

ProgressCallback = Callable[[ProcessingProgress], Any]
SymbolCallback = Callable[[SymbolResult], Any]


def to_epoch(value: datetime | str | int | float) -> int:
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        value = parse_datetime(value, "date")
    return int(value.timestamp())


class Notifier:
    """Calls user callbacks on its own thread, in order, so workers never wait for them and a
    callback that raises never stops processing."""

    _STOP = object()

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="ktrdr-notifier", daemon=True)
        self._thread.start()

    def post(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self._queue.put((fn, arg))

    def _loop(self) -> None:
        while (item := self._queue.get()) is not self._STOP:
            fn, arg = item
            try:
                fn(arg)
            except Exception:
                log.exception("progress callback raised; processing continues")

    def close(self) -> None:
        self._queue.put(self._STOP)
        self._thread.join()


class ProcessingEngine:
    """Collect bars for many symbols with a pool of worker threads.

    >>> engine = ProcessingEngine(provider, store, workers=4)
    >>> results = engine.process_batch(["AAPL", "MSFT"], "1d", start="2024-01-01", end="2024-06-01")
    """

    def __init__(
        self,
        provider: Provider,
        store: Store,
        workers: int = 4,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        pacer: Pacer | None = None,
        now: Callable[[], float] = time.time,
        owner: str | None = None,
        sharing: Sharing | None = None,
        executor: str | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.provider = provider
        self.store = store
        self.workers = workers
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.now = now
        """Wall clock: where the publication edge is (tests inject one)."""
        self.claims = ClaimBook(owner)
        """Ranges this engine fetches are claimed under `owner` (a job id; default: the pid), so
        that other jobs wait for them instead of fetching them too (storage/claims.py)."""
        self.executor = executor
        """`threads` (this process) or `dask://HOST:PORT` (a Dask cluster); None: config `executor`."""
        self.sharing = sharing
        """Where pacing budgets live: Redis, shared by every host, or this machine's files (None:
        config `pacing_url`; see providers/redis_pacing.py)."""
        self.pacer = pacer if pacer is not None else pacer_for(provider.name, provider.rate_limit,
                                                               provider.rate_windows, sharing=sharing,
                                                               credential=credential_of(provider))
        """The provider's default pacer (`rate_limit`, `rate_windows`). A job's requests go through
        `pacer_of(timeframe)`: this one, unless the provider paces that timeframe otherwise."""
        self._injected_pacer = pacer
        self._pacers: dict[str, Pacer | None] = {}
        self._pacers_lock = threading.Lock()

    def check_executor(self) -> None:
        """With a cluster executor: raise unless the cluster answers and its workers see the store's
        folder (engine/dask_executor.py); nothing to check for threads."""
        cluster = executor_for(self.executor)
        if cluster is not None:
            cluster.check(self.store)

    def pacer_of(self, timeframe: str) -> Pacer | None:
        """The machine-wide pacer for this timeframe's requests: the injected one, else the one of
        `provider.pacing_for(timeframe)`, built once per timeframe."""
        if self._injected_pacer is not None:
            return self._injected_pacer
        with self._pacers_lock:
            if timeframe not in self._pacers:
                self._pacers[timeframe] = self._build_pacer(timeframe)
            return self._pacers[timeframe]

    def _build_pacer(self, timeframe: str) -> Pacer | None:
        default = (self.provider.rate_limit, self.provider.rate_windows)
        rate, windows = self.provider.pacing_for(timeframe)
        if same_pacing((rate, windows), default):
            return self.pacer
        return pacer_for(self.provider.name, rate, windows, default=default, sharing=self.sharing,
                         credential=credential_of(self.provider))

    def rate_limit_for(self, timeframe: str | None = None) -> float | None:
        """Sustained requests per second the pacer allows (the ETA's cap): for `timeframe`, or
        for the provider's default pacing when it is not known."""
        if timeframe is None:
            return self.pacer.rate if self.pacer is not None else self.provider.rate_limit
        pacer = self.pacer_of(timeframe)
        return pacer.rate if pacer is not None else None

    def new_tracker(self, symbols: Iterable[Any], timeframe: str | None = None, **kwargs: Any) -> ProgressTracker:
        """A tracker whose ETA is capped by the pacing of `timeframe` (without one: the provider's
        default pacing)."""
        return ProgressTracker(symbols, clock=self.clock, rate_limit=self.rate_limit_for(timeframe), **kwargs)

    def process_batch(
        self,
        symbols: Iterable[str],
        timeframe: str = "1d",
        start: datetime | str | int | None = None,
        end: datetime | str | int | None = None,
        progress_callback: ProgressCallback | None = None,
        cancellation_token: CancellationToken | None = None,
        *,
        gate: PauseGate | None = None,
        tracker: ProgressTracker | None = None,
        symbol_callback: SymbolCallback | None = None,
        on_stored: Callable[[str, tuple[int, int], int], None] | None = None,
        default_days: int = 365,
        refresh: bool = False,
    ) -> list[SymbolResult]:
        """Process every symbol; return one result per symbol, in the order given.

        `start=None` means the last `default_days` days; `start="earliest"` each symbol's first
        available bar. With `refresh`, the window is fetched again where it is stored too, and the
        stored bars there are replaced (a symbol's `candles` then counts bars added, changed or
        removed). On cancellation, pending symbols are
        not started and ProcessingCancelledException is raised with the results so far.
        """
        symbols = list(symbols)
        token = cancellation_token or CancellationToken()
        end_ts = to_epoch(end) if end is not None else int(time.time())
        start_ts: int | None
        if start is None:
            start_ts = end_ts - default_days * 86400
        elif start == "earliest":
            start_ts = None
        else:
            start_ts = to_epoch(start)
        tracker = tracker or self.new_tracker(symbols, timeframe)
        ctx = BatchContext(
            provider=self.provider, store=self.store, timeframe=timeframe, start=start_ts, end=end_ts,
            tracker=tracker, token=token, gate=gate or PauseGate(), pacer=self.pacer_of(timeframe), retry=self.retry,
            on_stored=on_stored, now=self.now, claims=self.claims, refresh=refresh,
        )
        todo = [s for s in symbols if tracker.snapshot_symbol(s).status not in FINISHED]
        notifier = Notifier() if (progress_callback or symbol_callback) else None
        tracker.start()
        if notifier and progress_callback:
            notifier.post(progress_callback, tracker.progress())
        results: dict[str, SymbolResult] = {}

        def report(result: SymbolResult) -> SymbolResult:
            if notifier:
                if symbol_callback:
                    notifier.post(symbol_callback, result)
                if progress_callback:
                    notifier.post(progress_callback, tracker.progress())
            return result

        def run_one(symbol: str) -> SymbolResult | None:
            if token.is_cancelled:  # not started: no result (the future may not have been cancelled yet)
                return None
            return report(SymbolPipeline(ctx, symbol).run())

        try:
            cluster = executor_for(self.executor)
            if cluster is None:
                # each worker's appends are written by a thread of this pool while it fetches on
                with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ktrdr-store") as writer:
                    ctx = dataclasses.replace(ctx, writer=writer)
                    self._run_pool(todo, run_one, token, results)
            else:  # each symbol a task on a Dask cluster; results come back here (engine/dask_executor.py)
                cluster.run(ctx, todo, lambda r: results.__setitem__(r.symbol, report(r)),
                            owner=self.claims.owner, sharing=self.sharing or configured_sharing())
        finally:
            if notifier:
                notifier.close()
        ordered = [results[s] for s in symbols if s in results]
        if token.is_cancelled:
            for symbol in todo:
                if symbol not in results:
                    tracker.symbol_finished(symbol, "cancelled")
            raise ProcessingCancelledException(partial_results=ordered)
        return ordered

    def _run_pool(
        self,
        todo: list[str],
        run_one: Callable[[str], SymbolResult | None],
        token: CancellationToken,
        results: dict[str, SymbolResult],
    ) -> None:
        remaining = iter(todo)
        window = 2 * self.workers  # symbols in flight: waiting costs O(workers), not O(symbols)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ktrdr-worker") as pool:
            pending: set[Future[SymbolResult | None]] = set()
            try:
                while True:
                    if not token.is_cancelled:
                        pending |= {pool.submit(run_one, s) for s in itertools.islice(remaining, window - len(pending))}
                    if not pending:
                        break
                    done, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
                    for future in done:
                        result = None if future.cancelled() else future.result()
                        if result is not None:
                            results[result.symbol] = result
                    if token.is_cancelled:
                        for future in pending:
                            future.cancel()
            except BaseException:  # Ctrl-C in a notebook or script: stop the workers, then re-raise
                token.cancel()
                for future in pending:
                    future.cancel()
                raise
