"""The pooled transport (HttpPool, urllib3): kept-alive connections on the caller's thread, the same
answers and errors as the other transports, cancellation within one 50 ms slice."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from ktrdr_collect.engine.cancellation import CancellationToken
from ktrdr_collect.providers import http
from ktrdr_collect.providers.base import PermanentError, RateLimitedError, TransientError
from ktrdr_collect.providers.http import USER_AGENT, HttpFailure, HttpPool, RequestCancelled, get_bytes, get_json
from tests.providers.browser_fakes import KeepAliveRunning, serve_keep_alive
from tests.providers.fake_apis import Handler, Request, drop_body, garbage, reset, slow, status

pytest.importorskip("urllib3")

CANCEL_S = 0.1
"""How soon a cancelled request must give up (the issue's bound)."""


def echo_route(h: Handler, r: Request) -> None:
    h.send_json(200, {"path": r.path, "params": r.params, "user_agent": h.headers.get("User-Agent")})


@pytest.fixture
def pool() -> Iterator[HttpPool]:
    p = HttpPool()
    yield p
    p.close()


@pytest.fixture
def api(pool: HttpPool) -> Iterator[KeepAliveRunning]:
    for running in serve_keep_alive(echo_route):
        try:
            yield running
        finally:
            pool.close()  # the server joins its connection threads: close ours first


@pytest.fixture(autouse=True)
def no_helper_threads() -> Iterator[None]:
    """The pooled transport starts no thread of its own."""
    before = {t.ident for t in threading.enumerate()}
    yield
    assert not [t for t in threading.enumerate() if t.name == "collect-http" and t.ident not in before]


def test_returns_the_json_body_as_ktrdr_collect(api: KeepAliveRunning, pool: HttpPool) -> None:
    body = get_json(f"{api.url}/x", {"a": 1, "skip": None}, timeout=5, pool=pool)
    assert body == {"path": "/x", "params": {"a": "1"}, "user_agent": USER_AGENT}
    assert api.api.requests[0].headers["Accept"] == "application/json"


def test_requests_reuse_one_kept_alive_connection(api: KeepAliveRunning, pool: HttpPool) -> None:
    token = CancellationToken()
    for i in range(20):
        get_json(f"{api.url}/{i}", timeout=5, interrupt=token if i % 2 else None, pool=pool)
    assert len(api.server.arrivals) == 20
    assert api.connections == 1


def test_each_worker_keeps_its_own_connection(api: KeepAliveRunning, pool: HttpPool) -> None:
    workers, each = 4, 15
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait(10)  # all first requests concurrently: each worker opens one connection
            for i in range(each):
                get_json(f"{api.url}/{i}", timeout=5, interrupt=CancellationToken(), pool=pool)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, name=f"test-worker-{n}") for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(api.server.arrivals) == workers * each
    assert api.connections <= workers  # never one per request


def test_error_answers_keep_the_connection(api: KeepAliveRunning, pool: HttpPool) -> None:
    api.queue(status(500, text="busy"), status(429, {"code": -1003}, headers={"Retry-After": "7"}),
              status(404, {"code": -1}))
    with pytest.raises(TransientError, match=r"^server error \(HTTP 500: busy\)$"):
        get_json(f"{api.url}/x", timeout=5, pool=pool)
    with pytest.raises(RateLimitedError) as info:
        get_json(f"{api.url}/x", timeout=5, pool=pool)
    assert info.value.retry_after == 7.0
    seen: list[HttpFailure] = []
    with pytest.raises(PermanentError):
        get_json(f"{api.url}/x", timeout=5, pool=pool, classify=lambda f: seen.append(f))
    assert seen[0].status == 404 and seen[0].body == {"code": -1} and seen[0].headers["content-type"]
    get_json(f"{api.url}/x", timeout=5, pool=pool)
    assert api.connections == 1


def test_malformed_json_is_transient(api: KeepAliveRunning, pool: HttpPool) -> None:
    api.queue(garbage("<html>maintenance</html>"))
    with pytest.raises(TransientError) as info:
        get_json(f"{api.url}/x", timeout=5, pool=pool)
    assert str(info.value) == f"malformed JSON from {api.url}/x: '<html>maintenance</html>'"


def test_get_bytes_returns_the_raw_body(api: KeepAliveRunning, pool: HttpPool) -> None:
    api.queue(status(200, text="PK\x03\x04 not json"))
    assert get_bytes(f"{api.url}/a.zip", timeout=5, pool=pool) == b"PK\x03\x04 not json"


def test_a_body_cut_short_is_transient_and_the_next_request_reconnects(api: KeepAliveRunning, pool: HttpPool) -> None:
    api.queue(drop_body)
    with pytest.raises(TransientError) as info:
        get_json(f"{api.url}/x", timeout=5, pool=pool)
    assert str(info.value) == "connection dropped mid-response (11 bytes read)"
    assert get_json(f"{api.url}/y", timeout=5, pool=pool)["path"] == "/y"
    assert api.connections == 2


def test_a_reset_connection_is_transient(api: KeepAliveRunning, pool: HttpPool) -> None:
    api.queue(reset)
    with pytest.raises(TransientError, match="^(connection dropped|network error|cannot connect): "):
        get_json(f"{api.url}/x", timeout=5, pool=pool)


def test_nothing_listening_is_transient(pool: HttpPool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError, match="^cannot connect: .*(refused|Errno)"):
        get_json(f"http://127.0.0.1:{port}/x", timeout=5, pool=pool)


def test_a_slow_server_times_out_as_transient(api: KeepAliveRunning, pool: HttpPool) -> None:
    for interrupt in (None, CancellationToken()):  # waited for in slices, or by the socket timeout
        api.queue(slow(api.api))
        with pytest.raises(TransientError) as info:
            get_json(f"{api.url}/x", timeout=0.2, interrupt=interrupt, pool=pool)
        assert str(info.value) == f"timed out after 0.2s: {api.url}/x"


def test_cancelling_gives_up_within_100ms_and_closes_the_connection(api: KeepAliveRunning, pool: HttpPool) -> None:
    token = CancellationToken()
    arrived = threading.Event()
    cancelled_at: list[float] = []

    def on_arrival() -> None:
        arrived.set()
        cancelled_at.append(time.monotonic())
        token.cancel()

    get_json(f"{api.url}/warm", timeout=5, pool=pool)
    api.queue(slow(api.api, seconds=10, on_arrival=on_arrival))
    with pytest.raises(RequestCancelled):
        get_json(f"{api.url}/x", timeout=10, interrupt=token, pool=pool)
    gave_up = time.monotonic() - cancelled_at[0]
    assert arrived.is_set() and gave_up < CANCEL_S, gave_up
    # the cancelled request's connection is not reused: its answer may still come
    assert get_json(f"{api.url}/y", timeout=5, pool=pool)["path"] == "/y"
    assert api.connections == 2


def test_an_already_cancelled_interrupt_sends_nothing(api: KeepAliveRunning, pool: HttpPool) -> None:
    token = CancellationToken()
    token.cancel()
    with pytest.raises(RequestCancelled):
        get_json(f"{api.url}/x", timeout=5, interrupt=token, pool=pool)
    assert api.api.requests == []


def test_closing_the_pool_closes_its_connections(api: KeepAliveRunning, pool: HttpPool) -> None:
    get_json(f"{api.url}/x", timeout=5, pool=pool)
    pool.close()
    get_json(f"{api.url}/y", timeout=5, pool=pool)  # still usable, on a new connection
    assert api.connections == 2


def test_without_urllib3_the_pool_falls_back_to_stdlib(api: KeepAliveRunning, pool: HttpPool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "urllib3", None)
    http._urllib3.cache_clear()
    try:
        assert not pool.kept_alive
        for i in range(3):
            assert get_json(f"{api.url}/{i}", timeout=5, pool=pool)["path"] == f"/{i}"
        assert api.connections == 3
    finally:
        http._urllib3.cache_clear()
