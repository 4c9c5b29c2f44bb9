"""One connection to TWS / IB Gateway, owned by one thread.

ib_async is asyncio-based: an `IB` object lives on the event loop of the thread that connected it,
and its blocking methods run that loop. The engine calls providers from several worker threads,
so every IB call is handed to one dedicated thread ("ktrdr-ib") that owns the `IB` object, its
loop and the connection; callers wait for the answer while watching the job's cancellation.
Calls are serial: a job has one request open at IB at a time (IB allows 50), and under the soft
pace of bars of a minute and more a job goes as fast as IB answers.

While a call runs, the thread collects what `errorEvent` reports (reqId, errorCode, errorString,
contract), so the caller can tell "no data" from a pacing violation or a timeout. An error after
which IB never answers the request but which ib_async only logs as a warning (321, "Error
validating request") ends the pending request at once (`end_request`), so the call returns with
the error instead of waiting out the timeout.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ktrdr_collect.providers.base import Interrupt, TransientError
from ktrdr_collect.providers.ib_contracts import ENDS_REQUEST, ErrorEvent, lost_connection

T = TypeVar("T")
_POLL_S = 0.05


def end_request(ib: Any, req_id: int) -> bool:
    """Settle ib_async's pending request `req_id` now with what it has received (usually nothing),
    as ib_async does itself for an error it does not take for a warning. Returns False when there
    is no such request (or an ib_async this does not know: the request then waits for its timeout)."""
    wrapper = getattr(ib, "wrapper", None)
    registry = getattr(wrapper, "requests", None)
    if hasattr(registry, "find_by_reqid"):  # ib_async with a RequestRegistry
        request = registry.find_by_reqid(req_id)
        if request is None:
            return False
        registry.set_result(request.key)
        return True
    futures = getattr(wrapper, "_futures", None)  # ib_async 1.x / 2.x: futures by reqId
    if isinstance(futures, dict) and req_id in futures and hasattr(wrapper, "_endReq"):
        wrapper._endReq(req_id)
        return True
    return False


class CallCancelled(Exception):
    """The job was cancelled while waiting for IB (the call finishes on its own)."""


@dataclass
class Answer(Generic[T]):
    value: T
    errors: list[ErrorEvent]
    elapsed: float


@dataclass(frozen=True)
class ConnectArgs:
    host: str
    port: int
    client_id: int
    timeout_s: float


class IbSession:
    def __init__(self, factory: Callable[[], Any], connect: ConnectArgs,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.factory = factory
        self.connect_args = connect
        self.monotonic = monotonic
        self._queue: queue.SimpleQueue[tuple[Callable[[Any], Any], Future[Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._ib: Any = None
        self._errors: list[ErrorEvent] = []

    # -- caller side ---------------------------------------------------------------------------
    def call(self, fn: Callable[[Any], T], interrupt: Interrupt | None = None) -> Answer[T]:
        """Run `fn(ib)` on the IB thread (connecting first if needed); raise CallCancelled if the
        job is cancelled meanwhile. Exceptions of `fn` propagate."""
        future: Future[Answer[T]] = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="ktrdr-ib", daemon=True)
                self._thread.start()
            self._queue.put((lambda ib: self._run(ib, fn), future))
        while True:
            try:
                return future.result(timeout=_POLL_S)
            except FutureTimeout:
                if interrupt is not None and interrupt.is_cancelled:
                    raise CallCancelled from None

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout=10)

    # -- IB thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(self._ib))
            except BaseException as e:  # handed to the caller
                future.set_exception(e)
        self._disconnect()
        self._ib = None  # bound to this thread's event loop: the next thread makes its own

    def _on_error(self, reqId: int, errorCode: int, errorString: str, contract: Any = None) -> None:  # noqa: N803
        self._errors.append((reqId, errorCode, errorString))
        if errorCode in ENDS_REQUEST and self._ib is not None:
            end_request(self._ib, reqId)

    def _connected(self) -> Any:
        if self._ib is None:
            self._ib = self.factory()
            self._ib.errorEvent += self._on_error
            if hasattr(self._ib, "RequestTimeout"):
                self._ib.RequestTimeout = self.connect_args.timeout_s + 5
        if not self._ib.isConnected():
            a = self.connect_args
            try:
                self._ib.connect(a.host, a.port, clientId=a.client_id, timeout=a.timeout_s)
            except (OSError, TimeoutError) as e:
                self._disconnect()
                raise TransientError(
                    f"cannot connect to TWS / IB Gateway at {a.host}:{a.port} (client id {a.client_id}): "
                    f"{e or type(e).__name__}"
                ) from None
        return self._ib

    def _run(self, _ib: Any, fn: Callable[[Any], T]) -> Answer[T]:
        ib = self._connected()
        self._errors = []
        started = self.monotonic()
        try:
            value = fn(ib)
        except TimeoutError:  # ib.RequestTimeout ran out (before OSError: TimeoutError is one)
            raise TransientError(f"no answer from IB within {getattr(ib, 'RequestTimeout', 0):g}s") from None
        except (ConnectionError, OSError) as e:
            self._disconnect()
            raise TransientError(f"connection to IB dropped: {e or type(e).__name__}") from None
        answer = Answer(value, list(self._errors), self.monotonic() - started)
        if lost_connection(answer.errors):
            self._disconnect()  # reconnect before the next request
        return answer

    def _disconnect(self) -> None:
        ib = self._ib
        if ib is None:
            return
        try:
            if ib.isConnected():
                ib.disconnect()
        except Exception:  # a half-dead connection must not stop the next attempt
            pass
