"""The binance provider against a local server answering like api.binance.com."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ktrdr_collect.cli.main import app
from ktrdr_collect.engine.cancellation import CancellationToken
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.engine.pipeline import RetryPolicy
from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.providers.base import (
    PermanentError,
    RateLimitedError,
    TransientError,
    UnknownSymbolError,
)
from ktrdr_collect.providers.binance import (
    EARLIEST,
    BinanceProvider,
    classify,
    market_id,
    parse_kline,
    parse_klines,
    period_start,
)
from ktrdr_collect.providers.http import HttpFailure
from ktrdr_collect.storage.csv_store import CsvStore
from tests.providers.browser_fakes import serve_keep_alive
from tests.providers.fake_apis import (
    BINANCE_LISTED,
    Running,
    binance_bars,
    binance_route,
    drop_body,
    garbage,
    slow,
    status,
)
from tests.providers.fake_binance_listing import (
    FRIDAY_2017_07_14,
    MONDAY_2017_07_03,
    MONDAY_2017_07_10,
    binance_waf_403,
    listing_bars,
    serve_listing,
)

JAN1 = 1_704_067_200  # 2024-01-01T00:00:00Z, a Monday
HOUR = 3600
FAST = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002)


def provider(api: Running, clock: float = 1_800_000_000.0, **options: object) -> BinanceProvider:
    """The API alone (test_provider_binance_archive.py covers source=auto and archive)."""
    return BinanceProvider({"base_url": api.url, "rate_limit": 0, "timeout_s": 5, "source": "api", **options},
                           clock=lambda: clock)


def test_symbols_in_either_form_become_the_market_id() -> None:
    assert market_id("BTC/USDT") == "BTCUSDT" == market_id("btcusdt") == market_id("BTC-USDT")


def test_fetch_parses_klines_and_sends_the_expected_query(binance_api: Running) -> None:
    bars = provider(binance_api).fetch("BTC/USDT", "1h", JAN1, JAN1 + 5 * HOUR, CancellationToken())
    assert bars == binance_bars("BTCUSDT", "1h", JAN1, JAN1 + 5 * HOUR)
    assert [b[0] for b in bars] == [JAN1 + i * HOUR for i in range(5)]
    params = binance_api.api.requests[0].params
    assert binance_api.api.requests[0].path == "/api/v3/klines"
    assert params == {"symbol": "BTCUSDT", "interval": "1h", "startTime": str(JAN1 * 1000),
                      "endTime": str((JAN1 + 5 * HOUR) * 1000 - 1), "limit": "1000"}


def test_weekly_klines_open_on_mondays(binance_api: Running) -> None:
    bars = provider(binance_api).fetch("ETHUSDT", "1w", JAN1, JAN1 + 28 * 86400, CancellationToken())
    assert [b[0] for b in bars] == [JAN1 + i * 7 * 86400 for i in range(4)]


def test_the_still_forming_candle_is_dropped(binance_api: Running) -> None:
    now = JAN1 + 3 * HOUR + 600  # the 03:00 candle closes at 03:59:59.999
    bars = provider(binance_api, clock=now).fetch("BTCUSDT", "1h", JAN1, JAN1 + 10 * HOUR, CancellationToken())
    assert [b[0] for b in bars] == [JAN1, JAN1 + HOUR, JAN1 + 2 * HOUR]


def test_parse_klines_is_parse_kline_row_by_row() -> None:
    rows: list[object] = [[(JAN1 + i * 60) * 1000, "1.5", "2", "0.5", "1.25", "10.00000001",
                           (JAN1 + i * 60 + 60) * 1000 - 1, "0", 1, "0", "0", "0"] for i in (3, 1, 2, 0, 5)]
    now_ms = (JAN1 + 4 * 60) * 1000  # the 04:00 and later candles are still forming
    expected = sorted((b for b in (parse_kline(r, now_ms) for r in rows) if b is not None), key=lambda b: b[0])
    assert parse_klines(rows, now_ms) == expected and [b[0] for b in expected] == [JAN1 + i * 60 for i in range(4)]
    for bad in ([*rows, {"0": 1}], [*rows, [1, 2, 3]], [*rows, [1, "x", 2, 3, 4, 5, 6]]):
        with pytest.raises(TransientError, match="malformed kline from binance"):
            parse_klines(bad, now_ms)


def test_unknown_symbol(binance_api: Running) -> None:
    with pytest.raises(UnknownSymbolError, match="Invalid symbol"):
        provider(binance_api).fetch("NOPE/USDT", "1h", JAN1, JAN1 + HOUR, CancellationToken())


def test_rate_limited_with_retry_after(binance_api: Running) -> None:
    binance_api.queue(status(429, {"code": -1003, "msg": "Too much request weight used"},
                             headers={"Retry-After": "3"}))
    with pytest.raises(RateLimitedError) as info:
        provider(binance_api).fetch("BTCUSDT", "1h", JAN1, JAN1 + HOUR, CancellationToken())
    assert info.value.retry_after == 3.0


def test_ip_ban_418_is_a_rate_limit(binance_api: Running) -> None:
    binance_api.queue(status(418, {"code": -1003, "msg": "Way too much request weight used; IP banned"},
                             headers={"Retry-After": "600"}))
    with pytest.raises(RateLimitedError) as info:
        provider(binance_api).fetch("BTCUSDT", "1h", JAN1, JAN1 + HOUR, CancellationToken())
    assert info.value.retry_after == 600.0


def test_other_api_errors_are_permanent(binance_api: Running) -> None:
    binance_api.queue(status(400, {"code": -1120, "msg": "Invalid interval."}))
    with pytest.raises(PermanentError, match=r"Invalid interval\. \(code -1120, HTTP 400\)"):
        provider(binance_api).fetch("BTCUSDT", "1h", JAN1, JAN1 + HOUR, CancellationToken())


@pytest.mark.parametrize("action", [status(502, text="Bad Gateway"), garbage(), drop_body,
                                    status(200, {"not": "a list"})])
def test_server_trouble_is_transient(binance_api: Running, action: object) -> None:
    binance_api.queue(action)  # type: ignore[arg-type]
    with pytest.raises(TransientError):
        provider(binance_api).fetch("BTCUSDT", "1h", JAN1, JAN1 + HOUR, CancellationToken())


def test_malformed_kline_rows_are_transient(binance_api: Running) -> None:
    binance_api.queue(status(200, [[JAN1 * 1000, "1", "2", "0.5", "x", "10", JAN1 * 1000 + 1]]))
    with pytest.raises(TransientError, match="malformed kline"):
        provider(binance_api).fetch("BTCUSDT", "1h", JAN1, JAN1 + HOUR, CancellationToken())


def test_timeout_option_is_honoured(binance_api: Running) -> None:
    binance_api.queue(slow(binance_api.api))
    with pytest.raises(TransientError, match="timed out after 0.2s"):
        provider(binance_api, timeout_s=0.2).fetch("BTCUSDT", "1h", JAN1, JAN1 + HOUR, CancellationToken())


def test_head_timestamp_is_the_first_kline(binance_api: Running) -> None:
    p = provider(binance_api)
    assert p.head_timestamp("SOL/USDT", "1h") == BINANCE_LISTED["SOLUSDT"]
    assert binance_api.api.requests[-1].params["limit"] == "1"
    assert p.earliest("1d") == EARLIEST == 1_499_990_400


def test_options_are_checked() -> None:
    with pytest.raises(ProviderUnavailableError, match="max_bars must be 1..1000"):
        BinanceProvider({"max_bars": 5000})
    p = BinanceProvider({})
    assert p.rate_limit == 10.0 and p.max_bars == 1000 and p.base_url == "https://api.binance.com"
    assert BinanceProvider({"rate_limit": "0"}).rate_limit is None


def test_engine_job_stores_exactly_the_servers_bars_then_asks_nothing(binance_api: Running, tmp_path: Path) -> None:
    start, end = JAN1, JAN1 + 3 * 86400  # 72 1h bars per symbol, in one request each
    p = provider(binance_api, max_bars=50)  # 2 segments per symbol
    store = CsvStore(tmp_path / "data")
    symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    results = ProcessingEngine(p, store, workers=3, retry=FAST).process_batch(symbols, "1h", start, end)
    assert [r.status for r in results] == ["completed"] * 3
    for symbol in symbols:
        expected = binance_bars(market_id(symbol), "1h", start, end)
        assert store.read("binance", "1h", symbol) == expected
    assert (tmp_path / "data/binance/1h/BTC_USDT.csv").exists()
    assert sum(r.requests for r in results) == len(binance_api.api.requests) == 6
    again = ProcessingEngine(p, store, workers=3, retry=FAST).process_batch(symbols, "1h", start, end)
    assert [r.status for r in again] == ["completed"] * 3
    assert len(binance_api.api.requests) == 6  # nothing missing: not one request


def test_a_jobs_requests_reuse_kept_alive_connections(tmp_path: Path) -> None:
    pytest.importorskip("urllib3")
    start, end = JAN1, JAN1 + 10 * 86400  # 240 1h bars per symbol, 12 requests of 20
    symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    for api in serve_keep_alive(binance_route):
        p = provider(api, max_bars=20)
        try:
            store = CsvStore(tmp_path / "data")
            results = ProcessingEngine(p, store, workers=2, retry=FAST).process_batch(symbols, "1h", start, end)
            assert [r.status for r in results] == ["completed"] * 3
            assert store.read("binance", "1h", "SOL/USDT") == binance_bars("SOLUSDT", "1h", start, end)
        finally:
            p.close()  # before the server joins its connection threads
        assert len(api.server.arrivals) == 36
        assert api.connections <= 2  # one per worker at most, never one per request


def test_engine_retries_transient_and_waits_out_rate_limits(binance_api: Running, tmp_path: Path) -> None:
    binance_api.queue(status(503, text="busy"), status(429, {"code": -1003, "msg": "slow down"},
                                                       headers={"Retry-After": "0"}), drop_body)
    store = CsvStore(tmp_path / "data")
    engine = ProcessingEngine(provider(binance_api), store, workers=1, retry=FAST)
    tracker = engine.new_tracker(["BTCUSDT"])
    results = engine.process_batch(["BTCUSDT"], "1h", JAN1, JAN1 + 86400, tracker=tracker)
    assert results[0].status == "completed" and results[0].candles == 24
    assert len(binance_api.api.requests) == 4
    snap = tracker.snapshot()
    assert (snap.errors_count, snap.throttled, snap.requests) == (2, 1, 4)


def test_engine_fails_an_unknown_symbol_but_not_the_others(binance_api: Running, tmp_path: Path) -> None:
    results = ProcessingEngine(provider(binance_api), CsvStore(tmp_path / "data"), workers=2, retry=FAST
                               ).process_batch(["BTC/USDT", "DOGE/XYZ"], "1d", JAN1, JAN1 + 10 * 86400)
    by = {r.symbol: r for r in results}
    assert by["BTC/USDT"].status == "completed" and by["BTC/USDT"].candles == 10
    assert by["DOGE/XYZ"].status == "failed" and "Invalid symbol" in (by["DOGE/XYZ"].error or "")


def test_cli_start_collects_three_pairs(home: Path, binance_api: Running) -> None:
    args = ["start", "BTC/USDT", "ETH/USDT", "SOL/USDT", "-p", "binance", "-o", f"base_url={binance_api.url}",
            "-o", "rate_limit=50", "-t", "1h", "--start", "2024-01-01", "--end", "2024-01-03", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    final = json.loads(r.stdout.splitlines()[-1])
    assert final["event"] == "finished" and final["status"] == "completed"
    assert final["candles"] == 3 * 48 and final["requests"] == 3
    lines = (home / "data/binance/1h/BTC_USDT.csv").read_text().splitlines()
    assert lines[0] == "timestamp,open,high,low,close,volume"
    assert lines[1].startswith("2024-01-01T00:00:00Z,") and lines[-1].startswith("2024-01-02T23:00:00Z,")
    assert len(lines) == 49
    stored = CsvStore(home / "data").read("binance", "1h", "ETH/USDT")
    assert stored == binance_bars("ETHUSDT", "1h", JAN1, JAN1 + 2 * 86400)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and json.loads(again.stdout.splitlines()[-1])["requests"] == 0
    assert len(binance_api.api.requests) == 3


# --- the listing week, tiny prices and the WAF (issue 10) ----------------------------------------

WEEK = 7 * 86400
AUG_7_2017 = 1_502_064_000  # a Monday


@pytest.fixture
def listing_api() -> Iterator[Running]:
    yield from serve_listing()


def test_earliest_is_the_open_of_the_kline_holding_the_launch() -> None:
    p = BinanceProvider({})
    assert p.earliest("1w") == MONDAY_2017_07_10  # the Monday before Friday 2017-07-14
    assert p.earliest("1d") == p.earliest("4h") == p.earliest("1m") == EARLIEST == FRIDAY_2017_07_14
    assert period_start(FRIDAY_2017_07_14 + 5 * 3600 + 7, "4h") == FRIDAY_2017_07_14 + 4 * 3600
    assert period_start(MONDAY_2017_07_10 + WEEK - 1, "1w") == MONDAY_2017_07_10
    assert p.calendar.first_bar("1w", 0) == MONDAY_2017_07_10


def test_head_timestamp_is_binances_first_kline_even_before_the_launch(listing_api: Running) -> None:
    p = provider(listing_api)
    assert p.head_timestamp("TINY/BTC", "1w") == MONDAY_2017_07_10
    assert p.head_timestamp("TINY/BTC", "1d") == FRIDAY_2017_07_14  # opens 4 hours before the first trade
    assert p.head_timestamp("EARLY/BTC", "1w") == MONDAY_2017_07_03  # the documented example: not clamped
    assert p.earliest("1w") == MONDAY_2017_07_03  # and planned from there on


def test_a_window_ending_in_the_launch_week_still_asks_for_its_weekly_kline(
        listing_api: Running, tmp_path: Path) -> None:
    store = CsvStore(tmp_path / "data")
    start, end = MONDAY_2017_07_03 - 86400, FRIDAY_2017_07_14  # only the 07-03 and 07-10 klines open here
    results = ProcessingEngine(provider(listing_api), store, workers=2, retry=FAST).process_batch(
        ["TINY/BTC", "EARLY/BTC"], "1w", start, end)
    assert [r.status for r in results] == ["completed"] * 2
    assert [b[0] for b in store.read("binance", "1w", "TINY/BTC")] == [MONDAY_2017_07_10]
    assert [b[0] for b in store.read("binance", "1w", "EARLY/BTC")] == [MONDAY_2017_07_03, MONDAY_2017_07_10]


def test_engine_start_earliest_stores_the_listing_week_kline(listing_api: Running, tmp_path: Path) -> None:
    store = CsvStore(tmp_path / "data")
    results = ProcessingEngine(provider(listing_api), store, workers=2, retry=FAST).process_batch(
        ["TINY/BTC", "EARLY/BTC"], "1w", "earliest", AUG_7_2017)
    assert [r.status for r in results] == ["completed"] * 2
    tiny = store.read("binance", "1w", "TINY/BTC")
    assert tiny == listing_bars("TINYBTC", "1w", 0, AUG_7_2017)
    assert [b[0] for b in tiny] == [MONDAY_2017_07_10 + i * WEEK for i in range(4)]
    early = store.read("binance", "1w", "EARLY/BTC")
    assert [b[0] for b in early] == [MONDAY_2017_07_03 + i * WEEK for i in range(5)]


def test_cli_start_earliest_weekly_keeps_the_listing_week_in_plain_decimals(
        home: Path, listing_api: Running) -> None:
    args = ["start", "TINY/BTC", "-p", "binance", "-o", f"base_url={listing_api.url}", "-o", "rate_limit=0",
            "-t", "1w", "--start", "earliest", "--end", "2017-08-07", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    final = json.loads(r.stdout.splitlines()[-1])
    assert (final["status"], final["candles"]) == ("completed", 4)
    lines = (home / "data/binance/1w/TINY_BTC.csv").read_text().splitlines()
    assert lines[1].startswith("2017-07-10T00:00:00Z,0.0000")  # the Monday before Friday's listing
    assert not [line for line in lines[1:] if "e" in line]  # never 5.012e-05
    stored = CsvStore(home / "data").read("binance", "1w", "TINY/BTC")
    assert stored == listing_bars("TINYBTC", "1w", 0, AUG_7_2017)  # exact round trip of 0.00005012


def test_waf_403_html_is_a_rate_limit_without_retry_after(listing_api: Running) -> None:
    listing_api.queue(binance_waf_403)
    with pytest.raises(RateLimitedError, match=r"binance WAF refused the request \(HTTP 403\)") as info:
        provider(listing_api).fetch("TINYBTC", "1d", FRIDAY_2017_07_14, AUG_7_2017, CancellationToken())
    assert info.value.retry_after is None
    assert "too many requests" in str(info.value) and "<HTML>" not in str(info.value)


def test_waf_403_with_a_json_body_is_a_rate_limit_too() -> None:
    failure = HttpFailure("u", 403, {}, {"code": -1003, "msg": "WAF"}, '{"code": -1003, "msg": "WAF"}')
    error = classify(failure)
    assert isinstance(error, RateLimitedError) and error.retry_after is None


def test_engine_backs_off_after_a_waf_403_then_collects(listing_api: Running, tmp_path: Path) -> None:
    listing_api.queue(binance_waf_403, binance_waf_403)
    store = CsvStore(tmp_path / "data")
    engine = ProcessingEngine(provider(listing_api), store, workers=1, retry=FAST)
    tracker = engine.new_tracker(["TINY/BTC"])
    results = engine.process_batch(["TINY/BTC"], "1d", FRIDAY_2017_07_14, AUG_7_2017, tracker=tracker)
    assert results[0].status == "completed", results[0].error
    assert store.read("binance", "1d", "TINY/BTC") == listing_bars("TINYBTC", "1d", FRIDAY_2017_07_14, AUG_7_2017)
    snap = tracker.snapshot()
    assert (snap.throttled, snap.requests) == (2, 3)
