"""The little HTTP client HTTP providers share: GET a JSON document, classify what went wrong.

What to request (URL, headers, how to read an error response) is separate from how the bytes move,
the transport, picked by `get_json(client=...)` (docs/providers/http.md):

- "stdlib": `urllib.request`, one connection per request, so the base install stays light;
- "browser": `curl_cffi` impersonating Chrome (TLS and HTTP/2 fingerprint, Chrome's headers), with
  kept-alive connections. Yahoo refuses non-browser TLS clients since 2025. Needs the `yahoo` extra;
  without it the stdlib transport is used (`browser_client_available()` tells which).

A provider that owns an `HttpPool` passes it as `get_json(pool=...)`: its requests then go over kept-alive
connections (urllib3) on the caller's own thread, which waits for the answer in 50 ms slices so a
cancelled job stops waiting at once (no helper thread). Without urllib3 the pool falls back to "stdlib".

Otherwise the request runs on a short-lived helper thread while the caller waits on the job's
interrupt, so a cancelled job never waits for a slow server (the abandoned request ends by itself at
its timeout). Every transport reports failures the same way: HttpFailure for error responses,
TransientError with the same messages for network trouble.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import cache
from types import ModuleType
from typing import Any

from ktrdr_collect import __version__
from ktrdr_collect.providers.base import (
    Interrupt,
    PermanentError,
    ProviderError,
    RateLimitedError,
    TransientError,
    mark_sent,
)

USER_AGENT = f"ktrdr-collect/{__version__} (+https://pypi.org/project/ktrdr-collect/)"
BROWSER_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
)
RATE_LIMIT_STATUSES = (418, 429)
CLIENTS = ("stdlib", "browser")
IMPERSONATE = "chrome"
"""curl_cffi's alias for the newest Chrome it can impersonate."""
_POLL_S = 0.05
_BODY_SNIPPET = 200
_MAX_IDLE_SESSIONS = 8


class RequestCancelled(Exception):
    """The job was cancelled while the request was in flight (the provider returns no bars)."""


class Headers(Mapping[str, str]):
    """Response headers looked up in any case (HTTP/2 sends names in lower case); names kept as received,
    the last value wins when a name repeats."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = {name.lower(): (name, value) for name, value in items}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


@dataclass(frozen=True)
class HttpFailure:
    """An HTTP error response: status, headers and the body (parsed JSON when it is JSON)."""

    url: str
    status: int
    headers: Mapping[str, str]
    body: Any
    text: str

    def summary(self) -> str:
        snippet = " ".join(self.text.split())[:_BODY_SNIPPET]
        return f"HTTP {self.status}" + (f": {snippet}" if snippet else "")


Classifier = Callable[[HttpFailure], ProviderError | None]
"""A provider's reading of an error response; None falls back to the generic classification."""

Transport = Callable[[str, float, Mapping[str, str]], bytes | HttpFailure]
"""How bytes move: GET (full URL, timeout in seconds, the caller's headers) -> the whole body of a 2xx
answer, or the error response; network trouble raises TransientError."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds to wait: delta-seconds or an HTTP date; None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def build_url(url: str, params: Mapping[str, Any] | None = None) -> str:
    if not params:
        return url
    return f"{url}?{urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})}"


def classify_failure(failure: HttpFailure, classify: Classifier | None = None) -> ProviderError:
    """The error an HTTP error response means: the provider's reading first, then the generic one."""
    if classify is not None:
        specific = classify(failure)
        if specific is not None:
            return specific
    if failure.status in RATE_LIMIT_STATUSES:
        retry_after = parse_retry_after(failure.headers.get("Retry-After"))
        return RateLimitedError(f"rate limited ({failure.summary()})", retry_after=retry_after)
    if failure.status >= 500:
        return TransientError(f"server error ({failure.summary()})")
    return PermanentError(f"request refused ({failure.summary()})")


def _decode(raw: bytes) -> tuple[Any, str]:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text), text
    except ValueError:
        return None, text


def _read_error(url: str, err: urllib.error.HTTPError) -> HttpFailure:
    try:
        raw = err.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    body, text = _decode(raw)
    return HttpFailure(url, err.code, Headers((err.headers or {}).items()), body, text)


def _stdlib_get(url: str, timeout: float, headers: Mapping[str, str]) -> bytes | HttpFailure:
    """The stdlib transport: one GET on a fresh connection, as ktrdr-collect unless `headers` say otherwise."""
    sent = {"Accept": "application/json", "User-Agent": USER_AGENT, **headers}
    request = urllib.request.Request(url, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        return _read_error(url, e)
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, TimeoutError):
            raise TransientError(f"timed out after {timeout:g}s: {url}") from None
        raise TransientError(f"cannot connect: {reason}") from None
    except TimeoutError:
        raise TransientError(f"timed out after {timeout:g}s: {url}") from None
    except http.client.IncompleteRead as e:
        raise TransientError(f"connection dropped mid-response ({len(e.partial)} bytes read)") from None
    except (http.client.HTTPException, ConnectionError) as e:
        raise TransientError(f"connection dropped: {type(e).__name__}: {e}") from None
    except OSError as e:
        raise TransientError(f"network error: {e}") from None


# --- the browser transport (curl_cffi, imported on first use) -------------------------------------

# libcurl error codes (stable across versions), read as the stdlib transport reads the same trouble.
_CURL_TIMED_OUT = 28
_CURL_PARTIAL_BODY = 18
_CURL_CANNOT_CONNECT = frozenset({5, 6, 7, 35, 60})  # proxy or host not resolved, refused, TLS handshake, cert
_CURL_DROPPED = frozenset({8, 16, 52, 55, 56, 92})  # weird reply, HTTP/2, empty reply, send, recv, HTTP/2 stream


@cache
def _curl_cffi() -> ModuleType | None:
    """`curl_cffi` with its `requests` API loaded, or None when it is not installed or does not load."""
    try:
        import curl_cffi
        import curl_cffi.requests  # noqa: F401 - loads curl_cffi.requests
    except (ImportError, OSError):  # OSError: a wheel built for another system
        return None
    return curl_cffi


def browser_client_available() -> bool:
    """Whether `client="browser"` really uses curl_cffi (imports it on the first call, ~80 ms)."""
    return _curl_cffi() is not None


def _loaded_curl_cffi() -> ModuleType:
    curl_cffi = _curl_cffi()
    if curl_cffi is None:
        raise RuntimeError("the browser transport needs curl_cffi")
    return curl_cffi


def _new_session() -> Any:
    """A Chrome-impersonating session owning one libcurl handle, usable from any thread (one at a time)."""
    return _loaded_curl_cffi().requests.Session(impersonate=IMPERSONATE, use_thread_local_curl=False)


class _SessionPool:
    """Idle browser sessions, each a libcurl handle with its kept-alive connections.

    A request borrows a session on whatever thread it runs and gives it back when done. Helper threads
    are short-lived, so per-thread sessions would never reuse a connection; one shared session would
    make every request wait for the one before it (an abandoned one up to its timeout).
    """

    def __init__(self, max_idle: int = _MAX_IDLE_SESSIONS) -> None:
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._max_idle = max_idle

    @contextmanager
    def session(self) -> Iterator[Any]:
        session = self._take()
        try:
            yield session
        finally:
            self._give_back(session)

    def _take(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()  # the most recently used: its connection is the least likely stale
        return _new_session()

    def _give_back(self, session: Any) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(session)
                return
        session.close()

    def close_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()


_POOL = _SessionPool()


def close_idle_connections() -> None:
    """Close the browser transport's idle sessions and their kept-alive connections (requests in flight
    keep theirs; the next request opens new ones)."""
    _POOL.close_idle()


def _curl_text(error: BaseException) -> str:
    """curl's own words, without curl_cffi's wrapping ("Failed to perform, curl: (7) ... See https://...")."""
    text = str(error)
    _, found, rest = text.partition(") ")
    text = rest if found and text.startswith("Failed to perform") else text
    return text.split(" See https://curl.se/", 1)[0].rstrip(".")


def _curl_failure(error: Any, url: str, timeout: float) -> TransientError:
    """The TransientError the stdlib transport gives for the same trouble."""
    code = int(getattr(error, "code", 0) or 0)
    if code == _CURL_TIMED_OUT:
        return TransientError(f"timed out after {timeout:g}s: {url}")
    if code == _CURL_PARTIAL_BODY:
        partial = getattr(getattr(error, "response", None), "content", None) or b""
        return TransientError(f"connection dropped mid-response ({len(partial)} bytes read)")
    if code in _CURL_CANNOT_CONNECT:
        return TransientError(f"cannot connect: {_curl_text(error)}")
    if code in _CURL_DROPPED:
        return TransientError(f"connection dropped: curl error {code}: {_curl_text(error)}")
    return TransientError(f"network error: {_curl_text(error)}")


def _response_failure(url: str, response: Any) -> HttpFailure:
    body, text = _decode(response.content)
    return HttpFailure(url, response.status_code, Headers(response.headers.items()), body, text)


def _browser_get(url: str, timeout: float, headers: Mapping[str, str]) -> bytes | HttpFailure:
    """The browser transport: one GET as Chrome (its User-Agent unless `headers` say otherwise) on a
    kept-alive connection."""
    curl_error = _loaded_curl_cffi().CurlError
    with _POOL.session() as session:
        try:
            response = session.get(url, headers=dict(headers), timeout=timeout)
        except curl_error as e:
            raise _curl_failure(e, url, timeout) from None
    if 200 <= response.status_code < 300:
        return response.content
    return _response_failure(url, response)


# --- the pooled transport (urllib3, imported on first use) ----------------------------------------

POOL_SIZE = 32
"""Idle connections an HttpPool keeps per host (more concurrent requests open extra ones, closed after use)."""


@cache
def _urllib3() -> ModuleType | None:
    """`urllib3` (2.x), or None when it is not installed."""
    try:
        import urllib3
        import urllib3.util.wait  # noqa: F401 - loads urllib3.util.wait
    except ImportError:
        return None
    if not urllib3.__version__.startswith("2."):
        return None
    return urllib3


def pooled_client_available() -> bool:
    """Whether an HttpPool really keeps connections alive (urllib3 2.x is installed)."""
    return _urllib3() is not None


class _Waiting(threading.local):
    """The interrupt of the request this thread is sending (read by the connection while it waits)."""

    interrupt: Interrupt | None = None


_WAITING = _Waiting()


def _wait_for_answer(sock: Any, timeout: float | None) -> None:
    """Before the status line is read: wait until the answer starts arriving, in `_POLL_S` slices,
    raising RequestCancelled as soon as this thread's interrupt fires and TimeoutError (which urllib3
    reports as a read timeout) after `timeout` seconds."""
    interrupt = _WAITING.interrupt
    if interrupt is None or sock is None:
        return
    pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted are not seen by poll
    if pending is not None and pending():
        return
    wait_for_read = _loaded_urllib3().util.wait.wait_for_read
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if interrupt.is_cancelled:
            raise RequestCancelled
        left = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
        if left <= 0:
            raise TimeoutError("timed out waiting for the answer")
        if wait_for_read(sock, timeout=left):
            return


def _loaded_urllib3() -> ModuleType:
    urllib3 = _urllib3()
    if urllib3 is None:
        raise RuntimeError("the pooled transport needs urllib3 2.x")
    return urllib3


@cache
def _watched_pool_classes() -> dict[str, type]:
    """urllib3's connection pools, whose connections wait for the answer with `_wait_for_answer`."""
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class WatchedHTTPConnection(HTTPConnection):
        def getresponse(self) -> Any:  # type: ignore[override]
            _wait_for_answer(self.sock, self.timeout if isinstance(self.timeout, int | float) else None)
            return super().getresponse()

    class WatchedHTTPSConnection(HTTPSConnection):
        def getresponse(self) -> Any:  # type: ignore[override]
            _wait_for_answer(self.sock, self.timeout if isinstance(self.timeout, int | float) else None)
            return super().getresponse()

    class WatchedHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = WatchedHTTPConnection

    class WatchedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = WatchedHTTPSConnection

    return {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}


def _pooled_failure(error: BaseException, url: str, timeout: float) -> TransientError:
    """The TransientError the stdlib transport gives for the same trouble (urllib3's exceptions unwrapped)."""
    exceptions = _loaded_urllib3().exceptions
    if isinstance(error, exceptions.MaxRetryError) and error.reason is not None:
        error = error.reason
    if isinstance(error, exceptions.ReadTimeoutError) or (
            isinstance(error, exceptions.ConnectTimeoutError) and not isinstance(error, exceptions.NewConnectionError)):
        return TransientError(f"timed out after {timeout:g}s: {url}")
    if isinstance(error, exceptions.NewConnectionError | exceptions.SSLError):
        cause = error.__cause__ if isinstance(error.__cause__, OSError) else error
        return TransientError(f"cannot connect: {cause}")
    inner = error.args[1] if isinstance(error, exceptions.ProtocolError) and len(error.args) > 1 else error
    if isinstance(inner, http.client.IncompleteRead | exceptions.IncompleteRead):
        partial = inner.partial
        got = partial if isinstance(partial, int) else len(partial)
        return TransientError(f"connection dropped mid-response ({got} bytes read)")
    if isinstance(inner, http.client.HTTPException | ConnectionError):
        return TransientError(f"connection dropped: {type(inner).__name__}: {inner}")
    return TransientError(f"network error: {inner}")


class HttpPool:
    """Kept-alive connections for one provider: bounded (`maxsize` idle connections per host),
    thread-safe, each request sent and answered on the caller's thread.

    Close it when the provider closes. Without urllib3 2.x every request takes the stdlib transport
    (a connection per request, on a helper thread)."""

    def __init__(self, maxsize: int = POOL_SIZE) -> None:
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, str, int | None], Any] = {}
        self._proxied: dict[str, Any] = {}

    @property
    def kept_alive(self) -> bool:
        return pooled_client_available()

    def _opener(self, url: str) -> tuple[Any, str]:
        """(what to call `urlopen` on, the URL to give it) for `url`: the host's own connection pool, or
        a manager sending through the proxy the environment names for it (as urllib does)."""
        urllib3 = _loaded_urllib3()
        parts = urllib.parse.urlsplit(url)
        classes = _watched_pool_classes()
        if parts.scheme not in classes or not parts.hostname:
            raise TransientError(f"cannot connect: unsupported URL {url!r}")
        proxy = urllib.request.getproxies().get(parts.scheme)
        if proxy and urllib.request.proxy_bypass(parts.hostname):
            proxy = None
        with self._lock:
            if proxy:
                manager = self._proxied.get(proxy)
                if manager is None:
                    manager = urllib3.ProxyManager(proxy, num_pools=8, maxsize=self.maxsize, block=False,
                                                   retries=False)
                    manager.pool_classes_by_scheme = classes
                    self._proxied[proxy] = manager
                return manager, url
            key = (parts.scheme, parts.hostname, parts.port)
            pool = self._pools.get(key)
            if pool is None:
                pool = classes[parts.scheme](parts.hostname, parts.port, maxsize=self.maxsize, block=False,
                                             retries=False)
                self._pools[key] = pool
        target = parts.path or "/"
        return pool, f"{target}?{parts.query}" if parts.query else target

    def get(self, url: str, timeout: float, headers: Mapping[str, str],
            interrupt: Interrupt | None = None) -> bytes | HttpFailure:
        """GET `url`: the body of a 2xx answer, or the error response; network trouble raises
        TransientError, a cancelled `interrupt` RequestCancelled (the connection is then closed)."""
        if not self.kept_alive:
            return _interruptible(lambda: _stdlib_get(url, timeout, headers), interrupt)
        if interrupt is not None and interrupt.is_cancelled:
            raise RequestCancelled
        urllib3 = _loaded_urllib3()
        sent = {"Accept": "application/json", "User-Agent": USER_AGENT, **headers}
        opener, target = self._opener(url)
        _WAITING.interrupt = interrupt
        try:
            response = opener.urlopen("GET", target, headers=sent, retries=False, redirect=False,
                                      timeout=urllib3.Timeout(connect=timeout, read=timeout))
        except urllib3.exceptions.HTTPError as e:
            raise _pooled_failure(e, url, timeout) from None
        except OSError as e:  # not wrapped by urllib3 (none expected)
            raise TransientError(f"network error: {e}") from None
        finally:
            _WAITING.interrupt = None
        if 200 <= response.status < 300:
            return response.data
        body, text = _decode(response.data)
        return HttpFailure(url, response.status, Headers(response.headers.items()), body, text)

    def close(self) -> None:
        """Close every connection (requests in flight finish on theirs; the pool stays usable)."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
            proxied, self._proxied = list(self._proxied.values()), {}
        for pool in pools:
            pool.close()
        for manager in proxied:
            manager.clear()  # drops its pools; their connections close as the pools are collected


def transport_for(client: str) -> Transport:
    """The transport `client` names; "browser" without curl_cffi is the stdlib one."""
    if client not in CLIENTS:
        raise ValueError(f"unknown HTTP client {client!r} (choose from: {', '.join(CLIENTS)})")
    if client == "browser" and browser_client_available():
        return _browser_get
    return _stdlib_get


def _interruptible(fn: Callable[[], Any], interrupt: Interrupt | None) -> Any:
    """Run `fn` on a helper thread; raise RequestCancelled as soon as `interrupt` is cancelled."""
    if interrupt is None:
        return fn()
    if interrupt.is_cancelled:
        raise RequestCancelled
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=target, name="collect-http", daemon=True).start()
    while not done.wait(_POLL_S):
        if interrupt.is_cancelled:
            raise RequestCancelled
    if "error" in box:
        raise box["error"]
    return box["value"]


def get_bytes(
    url: str,
    params: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    interrupt: Interrupt | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    classify: Classifier | None = None,
    client: str = "stdlib",
    pool: HttpPool | None = None,
) -> bytes:
    """GET `url` with `params` and return the body of the 2xx answer; errors as `get_json` raises them."""
    transport = transport_for(client)
    full = build_url(url, params)
    sent = dict(headers or {})
    if interrupt is not None and interrupt.is_cancelled:
        raise RequestCancelled
    mark_sent(interrupt)
    if pool is not None and client == "stdlib":
        result = pool.get(full, timeout, sent, interrupt)
    else:
        result = _interruptible(lambda: transport(full, timeout, sent), interrupt)
    if isinstance(result, HttpFailure):
        raise classify_failure(result, classify)
    return result


def get_json(
    url: str,
    params: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    interrupt: Interrupt | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    classify: Classifier | None = None,
    client: str = "stdlib",
    pool: HttpPool | None = None,
) -> Any:
    """GET `url` with `params` and return the decoded JSON body.

    `client` picks the transport: "stdlib" (urllib) or "browser" (curl_cffi as Chrome, falling back
    to stdlib when curl_cffi is missing); with `pool`, "stdlib" requests go over the pool's kept-alive
    connections. Raises RateLimitedError (429/418, with Retry-After), TransientError (5xx, timeouts,
    refused or dropped connections, truncated or malformed bodies), PermanentError (other 4xx),
    whatever `classify` makes of an error response, RequestCancelled if `interrupt` fires first, and
    ValueError for an unknown `client`.
    """
    raw = get_bytes(url, params, timeout, interrupt, headers=headers, classify=classify, client=client, pool=pool)
    return parse_json(raw, url)


def parse_json(raw: bytes, url: str) -> Any:
    """A JSON body; TransientError (a truncated or garbled answer: worth asking again) if it is none."""
    body, text = _decode(raw)
    if body is None:
        snippet = " ".join(text.split())[:_BODY_SNIPPET]
        raise TransientError(f"malformed JSON from {url}: {snippet!r}")
    return body
