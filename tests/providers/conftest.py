"""Fixtures: local fake APIs, each in its own thread, shut down and joined after the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.providers.fake_apis import Running, binance_route, serve


@pytest.fixture
def binance_api() -> Iterator[Running]:
    yield from serve(binance_route)
