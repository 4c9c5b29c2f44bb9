"""Run a batch's pipelines as tasks on a Dask distributed cluster (config `executor =
dask://HOST:PORT`).

The process that calls the engine (a job's runner) stays the owner of the batch: its tracker, its
state, its control. Each symbol's pipeline runs as one task (`run_series`) on a worker, which
rebuilds the provider and the store from plain data and runs the ordinary engine there for that
one series. What flows between them goes through Dask's own facilities:

- progress: every tracker call on the worker is sent back as a Dask event (`Worker.log_event` on
  the batch's topic), replayed in order on the owner's tracker (`Client.subscribe_topic`);
- control: a Dask `Variable` holds `run`, `pause` or `cancel`; each task polls it every
  `CONTROL_POLL_S` and holds its pause gate or cancels its token (pause lands within ~0.3 s);
  pending tasks are also cancelled with `Client.cancel`;
- data: workers write to the data folder themselves, so it must be the same shared storage on
  every worker. A probe file written by the owner must be visible to each worker, else the batch
  is refused before any task runs.

Dask is imported only when an executor is used: `collect --help` never pays for it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ktrdr_collect.engine.cancellation import CancellationToken, PauseGate, ProcessingCancelledException
from ktrdr_collect.engine.pipeline import BatchContext, RetryPolicy, SymbolResult
from ktrdr_collect.engine.progress import ProgressTracker
from ktrdr_collect.errors import CollectError

log = logging.getLogger("ktrdr_collect.engine")

DASK_MISSING = "executor dask needs Dask: pip install 'ktrdr-collect[dask]'"
CONTROL_POLL_S = 0.1
"""How often a task reads the batch's control variable (pause, cancel)."""
BEAT_S = 0.5
OWNER_TIMEOUT_S = 3.0
"""The owner moves its beat every BEAT_S; a task whose owner's beat stood still this long cancels itself."""
EVENTS_DEADLINE_S = 30.0
"""Longest wait, after a task returned, for its last progress events to arrive."""
PROBE_FOLDER = ".ktrdr"

RELAYED = ("symbol_started", "stage", "waiting", "planned", "request_made", "request_failed", "segment_done",
           "candles_stored", "stored")
"""Tracker calls sent back to the owner (`symbol_finished` comes with the task's result)."""


class ExecutorError(CollectError):
    """The cluster cannot run the batch (unreachable, no shared storage, Dask missing)."""


def scheduler_address(executor: str) -> str:
    """`dask://HOST:PORT` -> `tcp://HOST:PORT` (what distributed.Client takes)."""
    parts = urlsplit(executor)
    if parts.scheme != "dask" or not parts.hostname or not parts.port:
        raise ExecutorError(f"executor must be threads or dask://HOST:PORT, got {executor!r}")
    return f"tcp://{parts.hostname}:{parts.port}"


def store_location(store: Any) -> tuple[str, str]:
    """(format, root) of a store a worker can open again with `storage.open.open_store`."""
    kinds = {"CsvStore": "csv", "ParquetStore": "parquet", "ObjectParquetStore": "parquet"}
    fmt = kinds.get(type(store).__name__)
    root = getattr(store, "root", None)
    if fmt is None or root is None:
        raise ExecutorError(f"the Dask executor cannot hand {type(store).__name__} to its workers")
    return fmt, str(root)


@dataclass(frozen=True)
class SeriesTask:
    """Everything a worker needs to run one batch's pipelines: plain, picklable data."""

    batch: str
    provider: str
    options: dict[str, Any]
    store_format: str
    store_root: str
    timeframe: str
    start: int | None
    end: int
    retry: RetryPolicy
    owner: str
    pacing_url: str | None
    pacing_per_host: tuple[str, ...]
    probe: str
    probe_text: str

    @property
    def topic(self) -> str:
        return f"ktrdr-collect-progress-{self.batch}"

    @property
    def control(self) -> str:
        return f"ktrdr-collect-control-{self.batch}"


def executor_for(executor: str | None) -> DaskExecutor | None:
    """The cluster executor for `executor` (None: config `executor`); None for threads."""
    if executor is None:
        from ktrdr_collect.config import load_settings

        executor = load_settings().values.get("executor") or "threads"
    return None if executor == "threads" else DaskExecutor(executor)


# -- on the worker --------------------------------------------------------------------------------


def probe_storage(path: str, text: str) -> str | None:
    """Run on every worker: None when the owner's probe file is there with its text, else why not.
    For a data folder that is a URL (an object store), `path` is that URL: the worker must reach it
    (with its own credentials and endpoint: AWS_* in its environment) and see the same bucket."""
    from ktrdr_collect.storage.urls import as_url

    if as_url(path) is not None:
        try:
            from ktrdr_collect.storage.open import open_store

            store: Any = open_store("parquet", path)  # type: ignore[arg-type]
            store.fs.ls(path.split("://", 1)[1].split("/", 1)[0])
        except Exception as e:  # no credentials, no endpoint, no bucket: say which
            return f"{path}: {type(e).__name__}: {e}"
        return None
    try:
        found = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    return None if found == text else f"{path} holds another batch's probe"


class RelayTracker(ProgressTracker):
    """A one-series tracker on the worker that also sends every change to the owner as a Dask event."""

    def __init__(self, symbol: str, send: Callable[[str, list[Any]], None]) -> None:
        super().__init__([symbol])
        self._send = send

    def symbol_started(self, symbol: str) -> None:
        super().symbol_started(symbol)
        self._send("symbol_started", [symbol])

    def stage(self, symbol: str, stage: str) -> None:
        super().stage(symbol, stage)
        self._send("stage", [symbol, stage])

    def waiting(self, symbol: str, owner: str) -> None:
        super().waiting(symbol, owner)
        self._send("waiting", [symbol, owner])

    def planned(self, symbol: str, segments_total: int) -> None:
        super().planned(symbol, segments_total)
        self._send("planned", [symbol, segments_total])

    def request_made(self, symbol: str) -> None:
        super().request_made(symbol)
        self._send("request_made", [symbol])

    def request_failed(self, throttled: bool = False) -> None:
        super().request_failed(throttled)
        self._send("request_failed", [throttled])

    def segment_done(self, symbol: str, candles: int, requested: bool = True) -> None:
        super().segment_done(symbol, candles, requested)
        self._send("segment_done", [symbol, candles, requested])

    def candles_stored(self, symbol: str, candles: int) -> None:
        super().candles_stored(symbol, candles)
        self._send("candles_stored", [symbol, candles])


@dataclass
class _Relay:
    """Numbered events of one attempt at one series, on the batch's topic."""

    worker: Any
    topic: str
    symbol: str
    attempt: str = field(default_factory=lambda: uuid.uuid4().hex)
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, method: str, args: list[Any]) -> None:
        with self.lock:
            self.sent += 1
            self.worker.log_event(self.topic, {"symbol": self.symbol, "attempt": self.attempt, "n": self.sent,
                                               "method": method, "args": args})


class _Follower:
    """A task's copy of the batch's control: `[command, beat]` in a Dask Variable, written by the
    owner. A beat that stops moving for `OWNER_TIMEOUT_S` means the owner is gone (its process was
    killed): the task cancels itself instead of running on unowned."""

    def __init__(self, variable: Any, gate: PauseGate, token: CancellationToken,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.variable, self.gate, self.token, self.clock = variable, gate, token, clock
        self.beat: Any = None
        self.beat_at = clock()

    def apply(self) -> None:
        try:
            command, beat = self.variable.get(timeout=5)
        except Exception:  # unreachable, or deleted by an owner that ended: judged by the beat below
            command, beat = None, self.beat
        now = self.clock()
        if beat != self.beat:
            self.beat, self.beat_at = beat, now
        elif now - self.beat_at > OWNER_TIMEOUT_S:
            log.warning("the batch's owner stopped answering for %.0f s: cancelling its task", now - self.beat_at)
            command = "cancel"
        if command == "cancel":
            self.token.cancel()
        elif command == "pause" and not self.gate.is_paused:
            self.gate.pause()
        elif command == "run" and self.gate.is_paused:
            self.gate.resume()

    def follow(self, done: threading.Event) -> None:
        while not done.wait(CONTROL_POLL_S) and not self.token.is_cancelled:
            self.apply()


def run_series(task: SeriesTask, symbol: str) -> dict[str, Any]:
    """One series' pipeline on a worker: the ordinary engine, on threads, for this symbol alone."""
    from distributed import Variable, get_client, get_worker

    from ktrdr_collect.config import load_settings
    from ktrdr_collect.engine.engine import ProcessingEngine
    from ktrdr_collect.providers.pacing import Sharing
    from ktrdr_collect.providers.registry import create_provider
    from ktrdr_collect.storage.open import open_store

    missing = probe_storage(task.probe, task.probe_text)
    if missing is not None:
        raise ExecutorError(f"this worker does not see the data folder {task.store_root} ({missing})")
    relay = _Relay(get_worker(), task.topic, symbol)
    token, gate, done = CancellationToken(), PauseGate(), threading.Event()
    control = _Follower(Variable(task.control, client=get_client()), gate, token)
    control.apply()  # before anything starts: a task started after a cancel stops at once
    follower = threading.Thread(target=control.follow, args=(done,), name="ktrdr-dask-control", daemon=True)
    follower.start()
    provider = None
    try:
        # secrets never travel with the task: a worker takes them from its own environment or config
        provider = create_provider(task.provider, {**load_settings().provider_options(task.provider), **task.options})
        store = open_store(task.store_format, Path(task.store_root))
        sharing = Sharing(task.pacing_url, frozenset(task.pacing_per_host)) if task.pacing_url else Sharing()
        engine = ProcessingEngine(provider, store, workers=1, retry=task.retry, owner=task.owner,
                                  sharing=sharing, executor="threads")
        tracker = RelayTracker(symbol, relay.send)
        try:
            results = engine.process_batch(
                [symbol], task.timeframe, start=task.start if task.start is not None else "earliest", end=task.end,
                cancellation_token=token, gate=gate, tracker=tracker,
                on_stored=lambda s, covered, bars: relay.send("stored", [s, list(covered), bars]))
        except ProcessingCancelledException as e:
            results = e.partial_results
        result = results[0] if results else SymbolResult(symbol, "cancelled")
    finally:
        done.set()
        follower.join()
        if provider is not None:
            provider.close()
    return {"result": result.__dict__, "attempt": relay.attempt, "events": relay.sent}


# -- on the owner ---------------------------------------------------------------------------------


class _Replay:
    """Applies the events of a batch's topic to the owner's tracker, counting them per attempt."""

    def __init__(self, ctx: BatchContext) -> None:
        self.ctx = ctx
        self.counts: dict[str, int] = {}
        self.changed = threading.Condition()

    def __call__(self, event: tuple[float, dict[str, Any]]) -> None:
        msg = event[1]
        method, args = msg["method"], msg["args"]
        try:
            if method == "stored":
                if self.ctx.on_stored is not None:
                    self.ctx.on_stored(args[0], (int(args[1][0]), int(args[1][1])), int(args[2]))
            elif method in RELAYED:
                getattr(self.ctx.tracker, method)(*args)
        except Exception:  # a bad event must not stop the others
            log.exception("dask executor: cannot apply progress event %s", method)
        with self.changed:
            self.counts[msg["attempt"]] = self.counts.get(msg["attempt"], 0) + 1
            self.changed.notify_all()

    def wait_for(self, attempt: str, events: int, deadline: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.counts.get(attempt, 0) >= events,
                                         timeout=max(0.0, deadline - time.monotonic()))


class DaskExecutor:
    """Runs `run_series` tasks on the cluster at `executor` (`dask://HOST:PORT`)."""

    def __init__(self, executor: str, connect_timeout_s: float = 10.0) -> None:
        self.address = scheduler_address(executor)
        self.executor = executor
        self.connect_timeout_s = connect_timeout_s

    def _client(self) -> Any:
        try:
            from distributed import Client
        except ImportError:
            raise ExecutorError(DASK_MISSING) from None
        try:
            return Client(self.address, timeout=self.connect_timeout_s, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ExecutorError(f"cannot reach the Dask scheduler at {self.executor}: {e}") from None

    def task_for(self, ctx: BatchContext, owner: str, sharing: Any, batch: str, probe: str) -> SeriesTask:
        fmt, root = store_location(ctx.store)
        return SeriesTask(
            batch=batch, provider=ctx.provider.name, options=ctx.provider.public_options(), store_format=fmt,
            store_root=root, timeframe=ctx.timeframe, start=ctx.start, end=ctx.end, retry=ctx.retry, owner=owner,
            pacing_url=getattr(sharing, "url", None), pacing_per_host=tuple(sorted(getattr(sharing, "per_host", ()))),
            probe=probe, probe_text=batch)

    @contextlib.contextmanager
    def _session(self, store: Any) -> Iterator[tuple[Any, str, str]]:
        """A client of the cluster whose every worker has read the probe file written under the
        store's folder: (client, batch id, probe path). Refused when any worker cannot."""
        _, root = store_location(store)
        from ktrdr_collect.storage.urls import as_url

        if as_url(root) is not None:  # an object store is shared storage: each worker must reach it
            client = self._client()
            try:
                batch = uuid.uuid4().hex[:16]
                self._check_storage(client, root, root, batch)
                yield client, batch, root
            finally:
                client.close()
            return
        if not Path(root).is_absolute():
            raise ExecutorError(f"the data folder must be an absolute path for a Dask cluster, got {root}")
        batch = uuid.uuid4().hex[:16]
        probe = Path(root) / PROBE_FOLDER / f"dask-probe-{batch}"
        client = self._client()
        try:
            from ktrdr_collect import files

            files.make_dirs(probe.parent, files.PRIVATE_DIR_MODE, root=Path(root))
            files.atomic_write(probe, batch.encode(), mode=files.PRIVATE_FILE_MODE, durable=True)
            self._check_storage(client, root, str(probe), batch)
            yield client, batch, str(probe)
        finally:
            probe.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the folder goes too, unless the store keeps files there
                probe.parent.rmdir()
            client.close()

    def check(self, store: Any) -> None:
        """Raise ExecutorError unless the cluster answers and every worker sees `store`'s folder
        (a job's runner can call it while preparing, so that a refusal leaves the job resumable)."""
        with self._session(store):
            pass

    def run(self, ctx: BatchContext, symbols: Sequence[str], finished: Callable[[SymbolResult], None],
            owner: str, sharing: Any) -> None:
        """Run every symbol's pipeline as a task; call `finished(result)` on the owner for each.
        Returns when all are done, or, after a cancel, when every started task has stopped."""
        if not symbols:
            return
        if getattr(sharing, "url", None) is None and ctx.pacer is not None:
            log.warning("no pacing_url: each worker host paces %s on its own, so hosts sharing an account "
                        "can exceed its limit; set pacing_url = redis://... (docs/scale-out.md)", ctx.provider.name)
        with self._session(ctx.store) as (client, batch, probe):
            self._run(client, ctx, self.task_for(ctx, owner, sharing, batch, probe), symbols, finished)

    def _check_storage(self, client: Any, root: str, probe: str, text: str) -> None:
        answers = client.run(probe_storage, probe, text)
        if not answers:
            raise ExecutorError(f"the Dask cluster at {self.executor} has no workers")
        blind = {worker: why for worker, why in answers.items() if why is not None}
        if blind:
            worker, why = sorted(blind.items())[0]
            raise ExecutorError(
                f"Dask worker {worker} does not see the data folder {root} ({why}): workers write "
                f"the data themselves, so it must be shared storage mounted at the same path on every worker")

    def _run(self, client: Any, ctx: BatchContext, task: SeriesTask, symbols: Sequence[str],
             finished: Callable[[SymbolResult], None]) -> None:
        from distributed import Variable, as_completed

        control = Variable(task.control, client=client)
        control.set(["run", 0])
        replay = _Replay(ctx)
        client.subscribe_topic(task.topic, replay)
        stop = threading.Event()
        mirror = threading.Thread(target=self._mirror_control, args=(ctx, control, stop),
                                  name="ktrdr-dask-mirror", daemon=True)
        mirror.start()
        todo = iter(enumerate(symbols))
        by_key: dict[str, str] = {}
        running = as_completed(loop=client.loop)

        def submit(count: int, again: str | None = None) -> None:
            items = [(uuid.uuid4().hex[:8], again)] if again else itertools.islice(todo, count)
            for i, symbol in items:
                future = client.submit(run_series, task, symbol, key=f"ktrdr-{task.batch}-{i}", pure=False)
                by_key[future.key] = symbol
                running.add(future)

        try:  # 2x the cluster's threads in flight, as the threaded engine: a cancel drains only those
            threads = client.nthreads()
            log.info("running %d series as tasks on the Dask cluster at %s (%d workers, %d threads)",
                     len(symbols), self.executor, len(threads), sum(threads.values()))
            submit(max(2, 2 * sum(threads.values())))
            for future in running:
                symbol = by_key.pop(future.key)
                if not self._collect(future, symbol, replay, ctx, finished):
                    submit(1, again=symbol)
                elif not ctx.token.is_cancelled:
                    submit(1)
        finally:
            stop.set()
            mirror.join()
            client.unsubscribe_topic(task.topic)
            control.delete()

    def _collect(self, future: Any, symbol: str, replay: _Replay, ctx: BatchContext,
                 finished: Callable[[SymbolResult], None]) -> bool:
        """Apply a finished task's result; False when the series must run again (its task took
        this owner for gone while it was not: a beat delayed past OWNER_TIMEOUT_S)."""
        if future.cancelled():
            return True
        try:
            answer = future.result()
        except Exception as e:  # the task raised, or its worker died more often than Dask retries
            result = SymbolResult(symbol, "failed", error=f"{type(e).__name__}: {e}")
        else:
            if not replay.wait_for(answer["attempt"], answer["events"], time.monotonic() + EVENTS_DEADLINE_S):
                log.warning("%s: some progress events from the cluster did not arrive", symbol)
            result = SymbolResult(**answer["result"])
            if result.status == "cancelled" and not ctx.token.is_cancelled:
                log.warning("%s: its task stopped without a cancel (the owner's beat was late); running it again",
                            symbol)
                return False
        ctx.tracker.symbol_finished(result.symbol, result.status, result.error)
        finished(result)
        return True

    @staticmethod
    def _mirror_control(ctx: BatchContext, control: Any, stop: threading.Event) -> None:
        """The owner's gate and token, copied into the batch's control variable as they change."""
        last, beat, beat_at = "run", 0, time.monotonic()
        while not stop.is_set():
            command = "cancel" if ctx.token.is_cancelled else "pause" if ctx.gate.is_paused else "run"
            now = time.monotonic()
            if command != last or now - beat_at >= BEAT_S:
                try:
                    control.set([command, beat + 1])
                    last, beat, beat_at = command, beat + 1, now
                except Exception as e:
                    if command != last:
                        log.warning("dask executor: cannot reach the scheduler to %s the tasks: %s", command, e)
            stop.wait(0.02)
