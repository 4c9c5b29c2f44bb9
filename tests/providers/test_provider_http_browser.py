"""The browser transport (curl_cffi as Chrome) behaves like the stdlib one against the fake APIs, looks
like Chrome, and keeps its connections alive."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ktrdr_collect.engine.cancellation import CancellationToken
from ktrdr_collect.providers import http
from ktrdr_collect.providers.base import PermanentError, RateLimitedError, TransientError
from ktrdr_collect.providers.http import (
    USER_AGENT,
    Headers,
    HttpFailure,
    RequestCancelled,
    browser_client_available,
    get_json,
)
from tests.providers.browser_fakes import KeepAliveRunning, serve_keep_alive
from tests.providers.fake_apis import (
    Handler,
    Request,
    Running,
    drop_body,
    garbage,
    reset,
    serve,
    slow,
    status,
)

pytest.importorskip("curl_cffi")

HELPER_THREAD = "collect-http"
HELPER_END_S = 5.0


def echo_route(h: Handler, r: Request) -> None:
    """The request as the server saw it: path, params, every User-Agent line, Chrome's client hint."""
    h.send_json(200, {"path": r.path, "params": r.params, "user_agents": h.headers.get_all("User-Agent") or [],
                      "sec_ch_ua": h.headers.get("sec-ch-ua")})


def forbidden_urlopen(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the browser client went through urllib")


def new_helper_threads(before: set[int | None]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == HELPER_THREAD and t.ident not in before]


@pytest.fixture(autouse=True)
def helper_threads_end() -> Iterator[None]:
    """Every request thread a test started has ended once its servers are down."""
    before = {t.ident for t in threading.enumerate()}
    yield
    left = new_helper_threads(before)
    for thread in left:
        thread.join(HELPER_END_S)
    assert not [t for t in left if t.is_alive()], "request threads outlived the test"


@pytest.fixture
def no_urllib(monkeypatch: pytest.MonkeyPatch) -> None:
    """The browser transport really is curl_cffi: going through urllib fails the test."""
    assert browser_client_available()
    monkeypatch.setattr(urllib.request, "urlopen", forbidden_urlopen)


@pytest.fixture(params=["stdlib", "browser"])
def client(request: pytest.FixtureRequest) -> str:
    """Each scenario through both transports."""
    if request.param == "browser":
        request.getfixturevalue("no_urllib")
    return str(request.param)


@pytest.fixture
def api() -> Iterator[Running]:
    yield from serve(echo_route)


@pytest.fixture
def keep_alive() -> Iterator[KeepAliveRunning]:
    yield from serve_keep_alive(echo_route)


@pytest.fixture
def no_curl_cffi(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """curl_cffi as if it were not installed."""
    monkeypatch.setitem(sys.modules, "curl_cffi", None)
    monkeypatch.setitem(sys.modules, "curl_cffi.requests", None)
    http._curl_cffi.cache_clear()
    yield
    http._curl_cffi.cache_clear()


# --- the same behaviour through both transports ------------------------------------------------


def test_returns_the_json_body(api: Running, client: str) -> None:
    body = get_json(f"{api.url}/x", {"a": 1, "b": "two", "skip": None}, timeout=5, client=client)
    assert (body["path"], body["params"]) == ("/x", {"a": "1", "b": "two"})


def test_a_json_error_body_reaches_the_classifier(api: Running, client: str) -> None:
    seen: list[HttpFailure] = []
    api.queue(status(404, {"chart": {"error": {"code": "Not Found"}}}, headers={"X-Trace": "abc"}))
    with pytest.raises(PermanentError, match="request refused .HTTP 404: "):
        get_json(f"{api.url}/x", timeout=5, classify=lambda f: seen.append(f), client=client)
    failure = seen[0]
    assert (failure.url, failure.status) == (f"{api.url}/x", 404)
    assert failure.body == {"chart": {"error": {"code": "Not Found"}}}
    assert failure.headers["x-trace"] == failure.headers["X-Trace"] == "abc"


@pytest.mark.parametrize(("code", "header", "expected"), [(429, "7", 7.0), (418, "120", 120.0), (429, None, None)])
def test_rate_limits_carry_retry_after(api: Running, client: str, code: int, header: str | None,
                                       expected: float | None) -> None:
    api.queue(status(code, {"code": -1003, "msg": "Too many requests"},
                     headers={"Retry-After": header} if header else None))
    with pytest.raises(RateLimitedError, match=f"rate limited .HTTP {code}: ") as info:
        get_json(f"{api.url}/x", timeout=5, client=client)
    assert info.value.retry_after == expected


def test_yahoo_style_plain_text_429_is_rate_limited(api: Running, client: str) -> None:
    api.queue(status(429, text="Too Many Requests"))
    with pytest.raises(RateLimitedError, match=r"^rate limited \(HTTP 429: Too Many Requests\)$") as info:
        get_json(f"{api.url}/x", timeout=5, client=client)
    assert info.value.retry_after is None


@pytest.mark.parametrize("code", [500, 502, 503])
def test_server_errors_are_transient(api: Running, client: str, code: int) -> None:
    api.queue(status(code, text="upstream unavailable"))
    with pytest.raises(TransientError, match=rf"^server error \(HTTP {code}: upstream unavailable\)$"):
        get_json(f"{api.url}/x", timeout=5, client=client)


def test_malformed_json_is_transient(api: Running, client: str) -> None:
    api.queue(garbage("<html>maintenance</html>"))
    with pytest.raises(TransientError) as info:
        get_json(f"{api.url}/x", timeout=5, client=client)
    assert str(info.value) == f"malformed JSON from {api.url}/x: '<html>maintenance</html>'"


def test_a_body_cut_short_is_transient(api: Running, client: str) -> None:
    api.queue(drop_body)
    with pytest.raises(TransientError) as info:
        get_json(f"{api.url}/x", timeout=5, client=client)
    assert str(info.value) == "connection dropped mid-response (11 bytes read)"


def test_a_reset_connection_is_transient(api: Running, client: str) -> None:
    api.queue(reset)
    with pytest.raises(TransientError, match="^(connection dropped|network error|cannot connect): "):
        get_json(f"{api.url}/x", timeout=5, client=client)


def test_nothing_listening_is_transient(client: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the request: connection refused
    with pytest.raises(TransientError, match="^cannot connect: "):
        get_json(f"http://127.0.0.1:{port}/x", timeout=5, client=client)


def test_a_slow_server_times_out_as_transient(api: Running, client: str) -> None:
    api.queue(slow(api.api))
    started = time.monotonic()
    with pytest.raises(TransientError) as info:
        get_json(f"{api.url}/x", timeout=0.2, client=client)
    assert str(info.value) == f"timed out after 0.2s: {api.url}/x"
    assert time.monotonic() - started < 3


def test_cancelling_returns_at_once_and_the_next_request_is_not_held_up(api: Running, client: str) -> None:
    token = CancellationToken()
    arrived = threading.Event()

    def on_arrival() -> None:
        arrived.set()
        token.cancel()

    api.queue(slow(api.api, seconds=10, on_arrival=on_arrival))
    started = time.monotonic()
    with pytest.raises(RequestCancelled):
        get_json(f"{api.url}/x", timeout=10, interrupt=token, client=client)
    assert arrived.is_set() and time.monotonic() - started < 2
    assert get_json(f"{api.url}/y", timeout=5, client=client)["path"] == "/y"  # the abandoned one still waits
    assert time.monotonic() - started < 3


def test_an_abandoned_request_ends_by_itself_at_its_timeout(api: Running, client: str) -> None:
    token = CancellationToken()
    before = {t.ident for t in threading.enumerate()}
    api.queue(slow(api.api, seconds=10, on_arrival=token.cancel))
    with pytest.raises(RequestCancelled):
        get_json(f"{api.url}/x", timeout=0.5, interrupt=token, client=client)
    (helper,) = new_helper_threads(before)
    helper.join(HELPER_END_S)
    assert not helper.is_alive() and not api.api.release.is_set()  # ended while the server still held it


def test_an_already_cancelled_interrupt_sends_nothing(api: Running, client: str) -> None:
    token = CancellationToken()
    token.cancel()
    with pytest.raises(RequestCancelled):
        get_json(f"{api.url}/x", timeout=5, interrupt=token, client=client)
    assert api.api.requests == []


# --- what only the browser transport does ------------------------------------------------------


def test_the_browser_client_sends_chrome_headers(api: Running, no_urllib: None) -> None:
    body = get_json(f"{api.url}/x", timeout=5, client="browser")
    (agent,) = body["user_agents"]
    assert "Chrome/" in agent and agent != USER_AGENT
    assert body["sec_ch_ua"] and "Chrome" in body["sec_ch_ua"]  # a client hint urllib never sends


def test_the_browser_client_keeps_the_callers_user_agent(api: Running, no_urllib: None) -> None:
    body = get_json(f"{api.url}/x", timeout=5, headers={"User-Agent": "Mozilla/5.0 test"}, client="browser")
    assert body["user_agents"] == ["Mozilla/5.0 test"]


def test_the_browser_client_keeps_connections_alive(keep_alive: KeepAliveRunning, no_urllib: None) -> None:
    token = CancellationToken()
    for i in range(5):  # every other one on a helper thread, as a job sends them
        get_json(f"{keep_alive.url}/{i}", timeout=5, interrupt=token if i % 2 else None, client="browser")
    assert len(keep_alive.server.arrivals) == 5
    assert keep_alive.connections == 1 and len(keep_alive.ports) == 1


def test_error_answers_do_not_cost_the_connection(keep_alive: KeepAliveRunning, no_urllib: None) -> None:
    keep_alive.queue(status(500, text="busy"), status(429, text="Too Many Requests"))
    for expected in (TransientError, RateLimitedError):
        with pytest.raises(expected):
            get_json(f"{keep_alive.url}/x", timeout=5, client="browser")
    get_json(f"{keep_alive.url}/x", timeout=5, client="browser")
    assert keep_alive.connections == 1


def test_the_stdlib_client_opens_a_connection_per_request(keep_alive: KeepAliveRunning) -> None:
    for i in range(5):
        get_json(f"{keep_alive.url}/{i}", timeout=5)
    assert keep_alive.connections == 5  # the server does tell connections apart


# --- choosing the transport --------------------------------------------------------------------


def test_without_curl_cffi_the_browser_client_falls_back_to_stdlib(api: Running, no_curl_cffi: None) -> None:
    assert not browser_client_available()
    assert get_json(f"{api.url}/x", timeout=5, client="browser")["user_agents"] == [USER_AGENT]


def test_an_unknown_client_is_refused_before_sending(api: Running) -> None:
    with pytest.raises(ValueError, match="unknown HTTP client 'curl'"):
        get_json(f"{api.url}/x", timeout=5, client="curl")
    assert api.api.requests == []


def test_importing_the_client_does_not_import_curl_cffi() -> None:
    code = "import sys, ktrdr_collect.providers.http; print('curl_cffi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"


def test_headers_are_read_in_any_case() -> None:
    headers = Headers([("Retry-After", "1"), ("content-type", "text/plain"), ("retry-after", "7")])
    assert headers["retry-after"] == headers["RETRY-AFTER"] == "7"
    assert headers.get("Content-Type") == "text/plain" and headers.get("X-Missing") is None
    assert list(headers) == ["retry-after", "content-type"] and len(headers) == 2
    assert headers == {"retry-after": "7", "content-type": "text/plain"}
