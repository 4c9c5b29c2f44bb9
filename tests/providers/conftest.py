"""Fixtures: local fake APIs, each in its own thread, shut down and joined after the test; and a guard
that fails any test whose pooled request would leave for Binance's real hosts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from ktrdr_collect.providers import http
from tests.providers.fake_apis import Running, binance_route, serve

REAL_HOSTS = ("binance.com", "binance.vision")


@pytest.fixture
def binance_api() -> Iterator[Running]:
    yield from serve(binance_route)


@pytest.fixture(autouse=True)
def no_real_binance(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request to api.binance.com or data.binance.vision (a default URL left in place) fails the test."""
    real_get = http.HttpPool.get

    def get(self: http.HttpPool, url: str, *args: Any, **kwargs: Any) -> Any:
        host = urlsplit(url).hostname or ""
        if host.endswith(REAL_HOSTS):
            raise AssertionError(f"a test reached for the internet: {url}")
        return real_get(self, url, *args, **kwargs)

    monkeypatch.setattr(http.HttpPool, "get", get)
