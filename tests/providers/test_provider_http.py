"""The shared HTTP helper: JSON in, classified errors out."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from ktrdr_collect.engine.cancellation import CancellationToken
from ktrdr_collect.providers.base import PermanentError, RateLimitedError, TransientError
from ktrdr_collect.providers.http import (
    USER_AGENT,
    HttpFailure,
    RequestCancelled,
    get_json,
    parse_retry_after,
)
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


def ok_route(h: Handler, r: Request) -> None:
    h.send_json(200, {"path": r.path, "params": r.params})


@pytest.fixture
def api() -> Iterator[Running]:
    yield from serve(ok_route)


def test_returns_the_json_body_and_sends_params_and_user_agent(api: Running) -> None:
    body = get_json(f"{api.url}/x", {"a": 1, "b": "two", "skip": None}, timeout=5)
    assert body == {"path": "/x", "params": {"a": "1", "b": "two"}}
    assert api.api.requests[0].headers["User-Agent"] == USER_AGENT


def test_headers_override_the_user_agent(api: Running) -> None:
    get_json(f"{api.url}/x", timeout=5, headers={"User-Agent": "Mozilla/5.0 test"})
    assert api.api.requests[0].headers["User-Agent"] == "Mozilla/5.0 test"


@pytest.mark.parametrize(("code", "header", "expected"), [(429, "7", 7.0), (418, "120", 120.0), (429, None, None)])
def test_rate_limit_statuses_carry_retry_after(api: Running, code: int, header: str | None,
                                               expected: float | None) -> None:
    api.queue(status(code, {"code": -1003, "msg": "Too many requests"},
                     headers={"Retry-After": header} if header else None))
    with pytest.raises(RateLimitedError) as info:
        get_json(f"{api.url}/x", timeout=5)
    assert info.value.retry_after == expected
    assert f"HTTP {code}" in str(info.value)


@pytest.mark.parametrize("code", [500, 502, 503])
def test_server_errors_are_transient(api: Running, code: int) -> None:
    api.queue(status(code, text="upstream unavailable"))
    with pytest.raises(TransientError, match=f"HTTP {code}: upstream unavailable"):
        get_json(f"{api.url}/x", timeout=5)


@pytest.mark.parametrize("code", [400, 401, 403, 404])
def test_other_client_errors_are_permanent(api: Running, code: int) -> None:
    api.queue(status(code, {"error": "nope"}))
    with pytest.raises(PermanentError, match=f"HTTP {code}"):
        get_json(f"{api.url}/x", timeout=5)


def test_a_classifier_reads_error_bodies_first(api: Running) -> None:
    seen: list[HttpFailure] = []

    def classify(f: HttpFailure) -> TransientError:
        seen.append(f)
        return TransientError("mine")

    api.queue(status(400, {"code": -1}))
    with pytest.raises(TransientError, match="mine"):
        get_json(f"{api.url}/x", timeout=5, classify=classify)
    assert seen[0].status == 400 and seen[0].body == {"code": -1}


def test_malformed_json_is_transient(api: Running) -> None:
    api.queue(garbage("<html>maintenance</html>"))
    with pytest.raises(TransientError, match="malformed JSON.*maintenance"):
        get_json(f"{api.url}/x", timeout=5)


def test_a_slow_server_times_out_as_transient(api: Running) -> None:
    api.queue(slow(api.api))
    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out after 0.2s"):
        get_json(f"{api.url}/x", timeout=0.2)
    assert time.monotonic() - started < 3


def test_a_body_cut_short_is_transient(api: Running) -> None:
    api.queue(drop_body)
    with pytest.raises(TransientError, match="dropped mid-response"):
        get_json(f"{api.url}/x", timeout=5)


def test_a_reset_connection_is_transient(api: Running) -> None:
    api.queue(reset)
    with pytest.raises(TransientError, match="connection dropped|network error|cannot connect"):
        get_json(f"{api.url}/x", timeout=5)


def test_nothing_listening_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the request: connection refused
    with pytest.raises(TransientError, match="cannot connect"):
        get_json(f"http://127.0.0.1:{port}/x", timeout=5)


def test_cancelling_abandons_a_request_in_flight(api: Running) -> None:
    token = CancellationToken()
    arrived = threading.Event()

    def on_arrival() -> None:
        arrived.set()
        token.cancel()

    api.queue(slow(api.api, seconds=10, on_arrival=on_arrival))
    started = time.monotonic()
    with pytest.raises(RequestCancelled):
        get_json(f"{api.url}/x", timeout=10, interrupt=token)
    assert arrived.is_set() and time.monotonic() - started < 2


def test_an_already_cancelled_interrupt_sends_nothing(api: Running) -> None:
    token = CancellationToken()
    token.cancel()
    with pytest.raises(RequestCancelled):
        get_json(f"{api.url}/x", timeout=5, interrupt=token)
    assert api.api.requests == []


def test_parse_retry_after_forms() -> None:
    now = datetime(2024, 1, 2, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(datetime(2024, 1, 2, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(later, now=now.timestamp()) == 30.0
    assert parse_retry_after(format_datetime(now, usegmt=True), now=now.timestamp() + 60) == 0.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None and parse_retry_after("") is None
