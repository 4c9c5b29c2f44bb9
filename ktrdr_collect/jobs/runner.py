"""The runner: the one process that owns a job while it runs.

`python -m ktrdr_collect.jobs.runner JOB_ID [--lock-fd N]`. It holds the job lock, reads the
control channel every 50 ms, runs the engine, and alone writes state.json: at once when a command
is acknowledged or the status changes, else at most every 75 ms and, for a big state, no more often
than its cost allows (10 % of a core, 4 MiB a second; docs/reliability.md, "Huge jobs").

A job the runner cannot carry on here and now stays resumable: a start-up error (bad config or
environment, a provider that is not installed), a state.json it cannot write (a full disk) or a
signal leave it `interrupted` with the reason — in state.json when that can still be written,
and always in the log and in runner.err — and `collect resume` continues it once the cause is
fixed. Only an error inside a running job (a bug) fails it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ktrdr_collect import paths
from ktrdr_collect.config import load_settings
from ktrdr_collect.engine.cancellation import CancellationToken, PauseGate, ProcessingCancelledException
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.engine.pipeline import RetryPolicy, SymbolResult
from ktrdr_collect.engine.progress import FINISHED as SYMBOL_FINISHED
from ktrdr_collect.engine.progress import BatchSnapshot, ProgressTracker, Summary, SymbolProgress, Totals
from ktrdr_collect.engine.units import TimeframeView, split_key, unit_key
from ktrdr_collect.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    CollectError,
    InvalidJobStateError,
    StateFileError,
)
from ktrdr_collect.jobs import control, model
from ktrdr_collect.jobs.folders import LOG_FILE, STOP_MARK, iso_now
from ktrdr_collect.jobs.journal import StoredJournal
from ktrdr_collect.jobs.lock import JobLock
from ktrdr_collect.jobs.record import JobState, SymbolEntry, read_spec
from ktrdr_collect.jobs.statefile import STATE_FILE, Encoded, encode_entry, encode_state, read_state, write_state
from ktrdr_collect.providers.registry import create_provider
from ktrdr_collect.storage import csv_lines
from ktrdr_collect.storage.open import open_store
from ktrdr_collect.text import CleanFormatter

log = logging.getLogger("ktrdr_collect.job")
CONTROL_POLL_S = 0.05
MIN_WRITE_INTERVAL_S = 0.075
"""At most ~13 writes a second; a change waits at most this long to be visible (aim: p99 <= 100 ms)."""
WRITE_CPU_SHARE = 0.10
"""Paced writes of state.json take at most this share of a core: after a write that cost C seconds
of CPU, the next paced one waits C / WRITE_CPU_SHARE."""
WRITE_BYTES_PER_S = 4 * 1024 * 1024
"""...and rewrite at most this many bytes a second (a state of 14 MB: every 3.5 s). Writes for a
command or a status change are not paced: they happen at once."""


def setup_logging(folder: Path) -> logging.Handler:
    os.close(paths.open_private(folder / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    handler = logging.FileHandler(folder / LOG_FILE, encoding="utf-8")
    formatter = CleanFormatter("%(asctime)s.%(msecs)03dZ %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger("ktrdr_collect")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def symbol_entry(sp: SymbolProgress, timeframe: str, cut_short: bool = False) -> SymbolEntry:
    """A series' entry in state.json (its tracker key split into symbol and timeframe);
    `cut_short`: a series cancelled by a stop starts again."""
    status = "pending" if cut_short and sp.status == "cancelled" else sp.status
    symbol, tf = split_key(sp.symbol, timeframe)
    return SymbolEntry(symbol, status, sp.stage, sp.segments_done, sp.segments_total, sp.candles, sp.requests,
                       sp.error, tf, sp.waiting_for)


def apply_summary(state: JobState, snap: Summary | BatchSnapshot) -> None:
    """The aggregates of a summary (or a snapshot) into the state; its `symbols` are not touched."""
    state.symbols_total = snap.total
    state.symbols_completed = snap.completed
    state.symbols_failed = snap.failed
    state.percent = snap.percent
    state.candles = snap.candles
    state.requests = snap.requests
    state.current_symbols = list(snap.current)
    state.elapsed_s = snap.elapsed_s
    state.rate_symbols_per_s = snap.rate_symbols_per_s
    state.rate_candles_per_s = snap.rate_candles_per_s
    state.eta_s = snap.eta_s
    state.errors_count = snap.errors_count
    state.throttled = snap.throttled


def tracker_symbols(entries: list[SymbolEntry], stored: dict[str, int], timeframe: str,
                    several: bool = False) -> list[SymbolProgress]:
    """Finished series are kept as they are; the rest start again (gap analysis skips what is
    stored). Candle counts come from the journal, which never lags behind the data files. Keys:
    the symbol, or `SYMBOL@TF` in a job of several timeframes (engine/units.py)."""
    out = []
    for e in entries:
        key = unit_key(e.symbol, e.timeframe or timeframe, several)
        candles = stored.get(key, e.candles)
        if e.status in SYMBOL_FINISHED:
            out.append(SymbolProgress(
                key, e.status, e.stage, e.segments_done, e.segments_total, candles, e.requests, e.error,
                planned=True,
            ))
        else:
            out.append(SymbolProgress(key, candles=candles, requests=e.requests))
    return out


def describe(e: BaseException) -> str:
    """An error as one line for the user: our own messages as they are, others with their type."""
    if isinstance(e, CollectError):
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return f"{type(e).__name__}: {e}"


@dataclass
class WriteStats:
    """What writing state.json cost this runner (logged when it ends)."""

    count: int = 0
    bytes: int = 0
    cpu_s: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def add(self, size: int, cpu_s: float) -> None:
        self.count += 1
        self.bytes += size
        self.cpu_s += cpu_s

    def line(self) -> str:
        wall = max(1e-9, time.monotonic() - self.started)
        return (f"{STATE_FILE} written {self.count} times, {self.bytes / 1e6:.1f} MB, {self.cpu_s:.2f} s of CPU "
                f"in {wall:.1f} s ({100 * self.cpu_s / wall:.1f} % of a core, {self.bytes / 1e6 / wall:.2f} MB/s)")


class Runner:
    def __init__(self, job_id: str, lock: JobLock) -> None:
        self.job_id = job_id
        self.folder = paths.job_dir(job_id)
        self.lock = lock
        self.state = read_state(self.folder)
        self.spec = read_spec(self.folder, self.state)
        self.token = CancellationToken()
        self.gate = PauseGate()
        self.cancel_requested = False
        self.stop_reason: str | None = None
        """Why the job stops before it ends (a signal, an unwritable state.json): it stays resumable."""
        self.done = threading.Event()
        self._write_lock = threading.Lock()
        self.clock: Callable[[], float] = time.monotonic
        self.cpu_clock: Callable[[], float] = time.thread_time
        """What paces the writes (tests put their own)."""
        self._next_write = 0.0
        """When the next paced write may happen: set by each write from its cost."""
        self._written_status: str | None = None
        self._lines: list[bytes] | None = None
        """Each symbol's line in state.json, in order, kept encoded: a write re-encodes only the
        symbols that changed since the one before."""
        self._line_of: dict[str, int] = {}
        self._cut_short = False
        """Stopped midway: symbols cancelled by the stop are written `pending` (they start again)."""
        self.writes = WriteStats()
        acks = control.acked_ids(self.state)
        self.control = control.ControlReader(
            self.folder, self.state.control_offset, self.state.control_tail, seen=acks, warn=log.warning,
        )
        self.tracker: ProgressTracker | None = None
        self.symbols: list[str] = list(dict.fromkeys(e.symbol for e in self.state.symbols))
        self.journal = StoredJournal(self.folder)

    # -- state.json --------------------------------------------------------------------
    def publish(self, durable: bool = False, final: bool = False) -> None:
        """Write state.json now: the start, a command acknowledged, the end."""
        with self._write_lock:
            self._write(durable, {"eta_s": 0.0, "current_symbols": []} if final else {})

    def publish_if_due(self) -> bool:
        """Write state.json if the last write's cost allows it by now, or if the status changed
        since; False if the write has to wait."""
        with self._write_lock:
            if self.clock() < self._next_write and self.state.status == self._written_status:
                return False
            self._write(False, {})
            return True

    def _write(self, durable: bool, overrides: dict[str, Any]) -> None:
        """The one way the runner writes state.json (holding the write lock)."""
        started, cpu = self.clock(), self.cpu_clock()
        payload = self._encode(overrides)
        write_state(self.folder, Encoded(payload), durable=durable)
        cost = self.cpu_clock() - cpu
        self.writes.add(len(payload), cost)
        self._written_status = self.state.status
        self._next_write = started + max(MIN_WRITE_INTERVAL_S, cost / WRITE_CPU_SHARE,
                                         len(payload) / WRITE_BYTES_PER_S)

    def _encode(self, overrides: dict[str, Any]) -> bytes:
        state = self.state
        timeframe = state.timeframe
        if self.tracker is None:  # before the run starts: the symbols as they were read
            lines = [encode_entry(e.to_json()) for e in state.symbols]
        else:
            everything = self._lines is None or self._cut_short
            summary, changed = self.tracker.drain(everything)
            apply_summary(state, summary)
            if changed:
                state.progress_at = iso_now()
            if everything or self._lines is None:
                self._lines = [encode_entry(symbol_entry(sp, timeframe, self._cut_short).to_json())
                               for sp in changed]
                self._line_of = {sp.symbol: i for i, sp in enumerate(changed)}
            else:
                for sp in changed:
                    self._lines[self._line_of[sp.symbol]] = encode_entry(symbol_entry(sp, timeframe).to_json())
            lines = self._lines
        for key, value in overrides.items():
            setattr(state, key, value)
        state.updated_at = iso_now()
        return encode_state(state.head(), lines)

    def try_publish(self, paced: bool = False) -> bool:
        """From the background threads. A state.json that cannot be written (a full disk) stops the
        job, resumable: running on would store data that its state no longer describes."""
        try:
            if paced:
                return self.publish_if_due()
            self.publish()
        except OSError as e:
            self.halt(f"cannot write {STATE_FILE}: {describe(e)}")
        return True

    def halt(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            log.error("job %s: %s; stopping (`collect resume %s` continues it)", self.job_id, reason, self.job_id)
        self.token.cancel()

    def change(self, step: Callable[..., None], *args: Any) -> None:
        """One step of the state machine (a JobState method), logged."""
        old = self.state.status
        step(*args)
        if self.state.status != old:
            log.info("job %s: %s -> %s", self.job_id, old, self.state.status)

    # -- threads -----------------------------------------------------------------------
    def control_loop(self) -> None:
        while not self.done.is_set():
            self.control_step()
            self.done.wait(CONTROL_POLL_S)

    def control_step(self) -> None:
        """One poll of the control channel: new commands are acted on, and their acknowledgements
        written at once (unpaced), so a sender sees them within one poll and one write."""
        commands = self.control.poll()
        if commands:
            self.acknowledge([(c, self.apply(c.cmd)) for c in commands])
            self.try_publish()

    def acknowledge(self, results: list[tuple[control.Command, str]]) -> None:
        """Acks by command id, and where reading stopped (so a restart neither misses nor repeats)."""
        with self._write_lock:
            for command, result in results:
                control.add_ack(self.state, command, result)
            self.state.control_offset = self.control.offset
            self.state.control_tail = self.control.tail_text()

    def apply(self, command: str) -> str:
        status = self.state.status
        assert self.tracker is not None
        if command == "pause" and status == model.RUNNING:
            self.gate.pause()
            self.tracker.pause()
            self.change(self.state.pause)
            return model.PAUSED
        if command == "resume" and status == model.PAUSED:
            self.tracker.resume()
            self.gate.resume()
            self.change(self.state.unpause)
            return model.RUNNING
        if command == "cancel":
            if not self.cancel_requested:
                log.info("job %s: cancel requested", self.job_id)
                self.cancel_requested = True
                self.token.cancel()
            return "cancelling"
        log.info("job %s: ignored %s while %s", self.job_id, command, status)
        return f"ignored: job is {status}"

    def writer_loop(self) -> None:
        """Paced writes: a change is written once the last write's cost allows (every 75 ms for a
        small state; a big one waits longer, so writing costs a bounded share of CPU and disk)."""
        assert self.tracker is not None
        version = self.tracker.version
        pending = False  # a change not written yet
        while not self.done.is_set():
            wait = max(0.0, self._next_write - self.clock()) if pending else 1.0
            seen = self.tracker.wait_for_change(version, timeout=wait)
            if self.done.is_set():
                return
            pending = pending or seen != version
            version = seen
            if pending:
                pending = not self.try_publish(paced=True)
            self.done.wait(MIN_WRITE_INTERVAL_S)

    def on_symbol(self, result: SymbolResult, timeframe: str | None = None) -> None:
        name = f"{result.symbol} {timeframe}" if timeframe else result.symbol
        if result.status == "completed":
            log.info("%s: completed, %d candles, %d requests", name, result.candles, result.requests)
        elif result.status == "failed":
            log.error("%s: failed: %s", name, result.error)

    def on_signal(self, signum: int, frame: object) -> None:
        log.warning("job %s: stopped by signal %d; `collect resume` continues it", self.job_id, signum)
        if self.stop_reason is None:
            self.stop_reason = f"stopped by signal {signum} ({signal.Signals(signum).name})"
        self.token.cancel()

    # -- the run -----------------------------------------------------------------------
    def prepare(self) -> tuple[Any, ProcessingEngine]:
        """Everything the run needs; an error here is a start-up error (the job stays resumable)."""
        state, spec = self.state, self.spec
        settings = load_settings()
        provider = create_provider(spec.provider, {**settings.provider_options(spec.provider), **spec.options})
        try:
            store = open_store(spec.format, spec.data_dir)
            # numpy, msgspec and the CSV digit tables now, not inside the first request, where a
            # cancel would wait for them (~90 ms: bench/control_latency's cancel outliers)
            csv_lines.warm_up()
            retry = RetryPolicy(max_throttle_wait_s=float(settings.values["max_rate_limit_wait"]))
            engine = ProcessingEngine(provider, store, workers=spec.workers, retry=retry, owner=self.job_id,
                                      executor=spec.executor)
            engine.check_executor()  # a cluster that does not answer, or cannot see the data: start-up error
            stored = self.journal.candles(
                lambda key, ranges: store.count(spec.provider, split_key(key, spec.timeframe)[1],
                                                split_key(key, spec.timeframe)[0], ranges))
            symbols = tracker_symbols(state.symbols, stored, spec.timeframe, spec.several)
            carried = Totals(state.requests, state.throttled, state.errors_count,
                             sum(sp.candles for sp in symbols), state.elapsed_s)
            self.tracker = engine.new_tracker(symbols, spec.timeframe, carried=carried)
            state.symbols = []  # the tracker has them now (and writes them): no second copy
        except BaseException:
            provider.close()
            raise
        return provider, engine

    def begin(self) -> None:
        self.change(self.state.begin, os.getpid(), iso_now())
        self.publish(durable=True)

    def run(self) -> int:
        state = self.state
        if state.finished:
            log.info("job %s is already %s", self.job_id, state.status)
            return state.exit_code or 0
        try:
            provider, engine = self.prepare()
        except Exception as e:  # bad config or environment, provider not installed, ...
            return self.stop(f"cannot start: {describe(e)}")
        try:
            self.begin()
        except OSError as e:
            provider.close()
            return self.stop(f"cannot write {STATE_FILE}: {describe(e)}")
        return self.process(provider, engine)

    def process(self, provider: Any, engine: ProcessingEngine) -> int:
        spec = self.spec
        assert self.tracker is not None
        threads = [threading.Thread(target=self.control_loop, name="ktrdr-control", daemon=True),
                   threading.Thread(target=self.writer_loop, name="ktrdr-state", daemon=True)]
        for t in threads:
            t.start()
        try:
            for timeframe in spec.all_timeframes:  # one after the other; every pair is in the one tracker
                engine.process_batch(
                    self.symbols, timeframe,
                    start="earliest" if spec.earliest else spec.start, end=spec.end,
                    cancellation_token=self.token, gate=self.gate, refresh=spec.refresh,
                    **self.for_timeframe(timeframe),
                )
        except ProcessingCancelledException:
            pass
        finally:
            self.done.set()
            self.tracker.notify()
            for t in threads:
                t.join()
            provider.close()
            self.journal.close()
        return self.finish()

    def for_timeframe(self, timeframe: str) -> dict[str, Any]:
        """What the engine gets to run one timeframe: the tracker (a view keyed by pair when the
        job has several timeframes), the per-series log line and the journal, keyed alike."""
        assert self.tracker is not None
        if not self.spec.several:
            return {"tracker": self.tracker, "symbol_callback": self.on_symbol, "on_stored": self.journal.record}
        journal = self.journal
        return {
            "tracker": TimeframeView(self.tracker, timeframe),
            "symbol_callback": lambda result: self.on_symbol(result, timeframe),
            "on_stored": lambda symbol, covered, bars: journal.record(unit_key(symbol, timeframe, True), covered,
                                                                      bars),
        }

    def finish(self) -> int:
        assert self.tracker is not None
        late = []
        for command in self.control.poll():  # acknowledge what arrived at the very end
            if command.cmd == "cancel" and self.stop_reason is None:
                self.cancel_requested = True
                late.append((command, "cancelling"))
            else:
                late.append((command, f"ignored: job is ending ({self.state.status})"))
        self.acknowledge(late)
        snap = self.tracker.summary()
        if self.stop_reason is not None and not self.cancel_requested:
            return self.stop_midway(self.stop_reason)
        apply_summary(self.state, snap)
        self.change(self.state.cancel if self.cancel_requested else self.state.finish, iso_now())
        status = self.state.status
        try:
            self.publish(durable=True, final=True)
        except OSError as e:
            return self.stop(f"cannot write {STATE_FILE}: {describe(e)}")
        log.info(
            "job %s %s: %d/%d symbols completed, %d failed, %d candles, %d requests, %.1fs",
            self.job_id, status, snap.completed, snap.total, snap.failed, snap.candles, snap.requests,
            snap.elapsed_s,
        )
        return model.exit_code(status, snap.failed) or 0

    def stop_midway(self, reason: str) -> int:
        """Stopped by a signal or an unwritable state: symbols cut short start again on resume."""
        self._cut_short = True
        return self.stop(reason)

    def stop(self, reason: str) -> int:
        """Leave the job `interrupted` (resumable) with the reason: in state.json if it can be
        written, and in runner.err (stderr) and the log whatever happens."""
        log.error("job %s interrupted: %s; fix the cause and run `collect resume %s`", self.job_id, reason,
                  self.job_id)
        print(f"{STOP_MARK}{reason}", file=sys.stderr, flush=True)
        self.change(self.state.interrupt, reason)
        self.write_last(current_symbols=[], eta_s=None)
        return EXIT_INTERRUPTED

    def fail(self, message: str) -> int:
        log.error("job %s failed: %s", self.job_id, message)
        try:
            self.change(self.state.fail, message, iso_now())
        except InvalidJobStateError:  # it had ended already: its status stands
            return self.state.exit_code or EXIT_JOB_FAILED
        self.write_last(eta_s=0.0, current_symbols=[])
        return EXIT_JOB_FAILED

    def write_last(self, **overrides: Any) -> None:
        """The runner's last write: if it fails, the reader falls back to runner.err for the reason."""
        with self._write_lock:
            try:
                self._write(True, overrides)
            except OSError as e:
                log.error("job %s: cannot write %s: %s", self.job_id, STATE_FILE, describe(e))


def take_lock(job_id: str, folder: Path, lock_fd: int | None) -> JobLock | None:
    if lock_fd is not None:
        return JobLock(folder, fd=lock_fd)
    lock = JobLock(folder)
    return lock if lock.try_acquire(attempts=10) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ktrdr_collect.jobs.runner")
    parser.add_argument("job_id")
    parser.add_argument("--lock-fd", type=int, default=None)
    args = parser.parse_args(argv)
    folder = paths.job_dir(args.job_id)
    lock = take_lock(args.job_id, folder, args.lock_fd)
    if lock is None:
        print(f"job {args.job_id} already has a runner", file=sys.stderr)
        return EXIT_ERROR
    lock.record_pid(os.getpid())
    try:
        handler = setup_logging(folder)
        runner = Runner(args.job_id, lock)
    except (StateFileError, OSError) as e:  # nothing can be recorded in the job: say why here
        print(f"{STOP_MARK}{describe(e)}", file=sys.stderr, flush=True)
        lock.release()
        return EXIT_ERROR
    signal.signal(signal.SIGTERM, runner.on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, runner.on_signal)
    try:
        return runner.run()
    except Exception as e:  # a bug inside a running job: it fails, and readers see why
        log.exception("job %s: runner crashed", args.job_id)
        return runner.fail(describe(e))
    finally:
        if runner.writes.count:
            log.info("job %s: %s", args.job_id, runner.writes.line())
        from ktrdr_collect.jobs.queue import handover

        handover(args.job_id)  # its last state is written: start the next queued job, if any
        handler.flush()
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
