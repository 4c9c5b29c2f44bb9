"""The yahoo provider against a local server answering like query2.finance.yahoo.com."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ktrdr_collect.cli.main import app
from ktrdr_collect.engine.cancellation import CancellationToken
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.engine.pipeline import RetryPolicy
from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.providers import yahoo
from ktrdr_collect.providers.base import PermanentError, RateLimitedError, TransientError, UnknownSymbolError
from ktrdr_collect.providers.yahoo import YahooProvider, parse_chart
from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.timeframes import parse_ts
from tests.providers.fake_apis import YAHOO_SYMBOLS, Running, garbage, status, yahoo_bars, yahoo_raw

FAST = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002)
DAY = 86400
NOW = parse_ts("2024-06-03T12:00:00Z")
JAN2 = parse_ts("2024-01-02")


@pytest.fixture(autouse=True)
def fresh_holidays() -> Iterator[None]:
    yahoo.nyse_holidays.cache_clear()
    yield
    yahoo.nyse_holidays.cache_clear()


def provider(api: Running, **options: object) -> YahooProvider:
    return YahooProvider({"base_url": api.url, "rate_limit": 0, "timeout_s": 5, "holidays": "off", **options},
                         clock=lambda: NOW)


def test_daily_bars_are_stamped_at_the_new_york_open(yahoo_api: Running) -> None:
    start, end = parse_ts("2024-01-01"), parse_ts("2024-01-13")
    bars = provider(yahoo_api).fetch("AAPL", "1d", start, end, CancellationToken())
    assert bars == yahoo_bars("AAPL", "1d", start, end)
    assert bars[0][0] == parse_ts("2024-01-01T14:30:00Z")  # 09:30 EST (no holidays without the calendar)
    summer = provider(yahoo_api).fetch("AAPL", "1d", parse_ts("2024-07-01"), parse_ts("2024-07-02"),
                                       CancellationToken())
    assert [b[0] for b in summer] == [parse_ts("2024-07-01T13:30:00Z")]  # 09:30 EDT
    req = yahoo_api.api.requests[0]
    assert req.path == "/v8/finance/chart/AAPL"
    assert req.params["interval"] == "1d" and req.params["includePrePost"] == "false"
    assert req.headers["User-Agent"].startswith("Mozilla/5.0")


def test_bars_with_null_prices_are_skipped_and_null_volume_is_zero(yahoo_api: Running) -> None:
    start, end = parse_ts("2024-03-04"), parse_ts("2024-03-09")
    raw = yahoo_raw("MSFT", "15m", start, end)
    bars = provider(yahoo_api).fetch("MSFT", "15m", start, end, CancellationToken())
    assert any(r[4] is None for r in raw) and any(r[5] is None for r in raw)  # the data has both kinds
    assert bars == yahoo_bars("MSFT", "15m", start, end)
    assert len(bars) == sum(r[4] is not None for r in raw)


def test_intervals_sent(yahoo_api: Running) -> None:
    p = provider(yahoo_api)
    for tf in ("1h", "1w", "5m"):
        p.fetch("AAPL", tf, JAN2, JAN2 + 3 * DAY, CancellationToken())
    assert [r.params["interval"] for r in yahoo_api.api.requests] == ["60m", "1wk", "5m"]


def test_daily_bars_reported_at_utc_midnight_are_moved_to_the_open() -> None:
    p = YahooProvider({"holidays": "off"})
    assert p.snap("1d", parse_ts("2024-01-03")) == parse_ts("2024-01-03T14:30:00Z")
    assert p.snap("1d", parse_ts("2024-01-03T05:00:00Z")) == parse_ts("2024-01-03T14:30:00Z")
    assert p.snap("1w", parse_ts("2024-01-03T14:30:00Z")) == parse_ts("2024-01-01T14:30:00Z")
    assert p.snap("1h", 123) == 123


def test_one_minute_windows_are_split_into_calls_yahoo_accepts(yahoo_api: Running) -> None:
    start, end = parse_ts("2024-05-06"), parse_ts("2024-05-20")  # 14 days: the server refuses > 8 per call
    bars = provider(yahoo_api).fetch("AAPL", "1m", start, end, CancellationToken())
    assert bars == yahoo_bars("AAPL", "1m", start, end) and len(bars) > 9 * 380
    spans = [int(r.params["period2"]) - int(r.params["period1"]) for r in yahoo_api.api.requests]
    assert len(spans) == 2 and max(spans) <= 8 * DAY
    assert provider(yahoo_api).max_bars_for("1m") == 5 * 390


def test_unknown_symbol_from_404(yahoo_api: Running) -> None:
    with pytest.raises(UnknownSymbolError, match="No data found, symbol may be delisted"):
        provider(yahoo_api).fetch("NOPE", "1d", JAN2, JAN2 + 5 * DAY, CancellationToken())


def test_422_is_permanent_with_its_description(yahoo_api: Running) -> None:
    yahoo_api.queue(status(422, {"chart": {"result": None, "error": {
        "code": "Unprocessable Entity", "description": "1m data not available for startTime=1 and endTime=2."}}}))
    with pytest.raises(PermanentError, match="1m data not available for startTime=1"):
        provider(yahoo_api).fetch("AAPL", "1m", JAN2, JAN2 + DAY, CancellationToken())


def test_429_plain_text_is_a_rate_limit(yahoo_api: Running) -> None:
    yahoo_api.queue(status(429, text="Too Many Requests", headers={"Retry-After": "2"}))
    with pytest.raises(RateLimitedError) as info:
        provider(yahoo_api).fetch("AAPL", "1d", JAN2, JAN2 + DAY, CancellationToken())
    assert info.value.retry_after == 2.0


@pytest.mark.parametrize("action", [status(500, text="oops"), garbage(), status(200, {"chart": {}})])
def test_server_trouble_is_transient(yahoo_api: Running, action: object) -> None:
    yahoo_api.queue(action)  # type: ignore[arg-type]
    with pytest.raises(TransientError):
        provider(yahoo_api).fetch("AAPL", "1d", JAN2, JAN2 + DAY, CancellationToken())


def test_an_empty_window_has_no_bars() -> None:
    body = {"chart": {"result": [{"meta": {}, "indicators": {"quote": [{}]}}], "error": None}}
    assert parse_chart(body) == []


def test_head_timestamp_uses_first_trade_date(yahoo_api: Running) -> None:
    p = provider(yahoo_api)
    assert p.head_timestamp("^GSPC", "1d") == YAHOO_SYMBOLS["^GSPC"]
    assert p.head_timestamp("AAPL", "1m") == p.earliest("1m") == NOW - 30 * DAY + 3600
    assert yahoo_api.api.requests[0].path == "/v8/finance/chart/^GSPC"


@pytest.mark.parametrize(("tf", "days"), [("1m", 30), ("5m", 60), ("30m", 60), ("1h", 730)])
def test_intraday_history_limits_are_refused_before_the_job(tf: str, days: int) -> None:
    p = YahooProvider({"holidays": "off"})
    p.check_window(tf, NOW - days * DAY + 3600, NOW, NOW)
    with pytest.raises(ValueError, match=f"yahoo serves {tf} bars only for the last {days} days: start must be"):
        p.check_window(tf, NOW - days * DAY + 3599, NOW, NOW)
    p.check_window("1d", 0, NOW, NOW)
    assert "4h" not in YahooProvider.timeframes


def test_engine_job_stores_exactly_the_servers_bars_then_asks_nothing(yahoo_api: Running, tmp_path: Path) -> None:
    start, end = parse_ts("2023-01-01"), parse_ts("2024-01-01")
    p = provider(yahoo_api)
    p.max_bars = 100  # a few segments per symbol
    store = CsvStore(tmp_path / "data")
    symbols = ["AAPL", "MSFT", "^GSPC"]
    results = ProcessingEngine(p, store, workers=3, retry=FAST).process_batch(symbols, "1d", start, end)
    assert [r.status for r in results] == ["completed"] * 3
    for symbol in symbols:
        assert store.read("yahoo", "1d", symbol) == yahoo_bars(symbol, "1d", start, end)
    made = len(yahoo_api.api.requests)
    assert made == sum(r.requests for r in results) == 9
    again = ProcessingEngine(p, store, workers=3, retry=FAST).process_batch(symbols, "1d", start, end)
    assert [r.status for r in again] == ["completed"] * 3
    assert len(yahoo_api.api.requests) == made


def test_holidays_on_without_exchange_calendars_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "exchange_calendars", None)  # import fails
    with pytest.raises(ProviderUnavailableError) as info:
        YahooProvider({"holidays": "on"})
    assert str(info.value) == (
        "provider yahoo: holidays need exchange_calendars: pip install 'ktrdr-collect[yahoo]'")
    monkeypatch.setattr(yahoo, "HAS_EXCHANGE_CALENDARS", False)
    assert YahooProvider({"holidays": "auto"}).calendar.holidays == frozenset()  # weekdays only


def test_holidays_from_exchange_calendars_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = [date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 4), date(2024, 1, 5), date(2024, 1, 8)]

    class Session:
        def __init__(self, d: date) -> None:
            self._d = d

        def date(self) -> date:
            return self._d

    class Calendar:
        def __init__(self, days: list[date]) -> None:
            self.sessions = [Session(d) for d in days]

    module = types.ModuleType("exchange_calendars")
    module.get_calendar = lambda name, start=None: Calendar(sessions)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "exchange_calendars", module)
    p = YahooProvider({"holidays": "on"})
    assert p.calendar.holidays == frozenset()  # Jan 2..8: only the weekend is closed
    sessions.remove(date(2024, 1, 4))
    assert YahooProvider({"holidays": "on"}).calendar.holidays == frozenset()  # computed once per process
    yahoo.nyse_holidays.cache_clear()
    p = YahooProvider({"holidays": "on"})
    assert p.calendar.holidays == frozenset({date(2024, 1, 4)})
    days = list(p.calendar.bar_times("1d", parse_ts("2024-01-02"), parse_ts("2024-01-09")))
    assert len(days) == 4 and parse_ts("2024-01-04T14:30:00Z") not in days


def test_bad_holidays_option() -> None:
    with pytest.raises(ProviderUnavailableError, match="holidays must be auto, on or off"):
        YahooProvider({"holidays": "maybe"})


def test_cli_refuses_windows_yahoo_cannot_serve_before_any_job(home: Path) -> None:
    r = CliRunner().invoke(app, ["start", "AAPL", "-p", "yahoo", "-t", "1m", "--days", "45"])
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: provider yahoo: yahoo serves 1m bars only for the last 30 days: start must be")
    assert "try --days 29" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["start", "AAPL", "-p", "yahoo", "-t", "4h"])
    assert r.exit_code == 1 and "provider yahoo has no 4h bars" in r.stderr
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())
