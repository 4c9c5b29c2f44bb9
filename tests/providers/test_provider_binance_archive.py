"""binance with source=auto|archive: whole months and days from Binance's public archives (a local
fake of data.binance.vision built from the same klines the fake API serves), the rest from the API;
stored bars identical to the API path; checksums verified; a missing or corrupt archive fetched from
the API."""

from __future__ import annotations

import hashlib
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
from ktrdr_collect.providers.binance import ArchiveCalendar, BinanceProvider, market_id
from ktrdr_collect.providers.binance_archive import (
    ArchiveUnavailable,
    day_of,
    holding,
    month_of,
    parse_checksum,
    parse_csv,
    ready_archives,
    to_seconds,
)
from ktrdr_collect.storage.csv_store import CsvStore
from tests.providers.browser_fakes import KeepAliveRunning, serve_keep_alive
from tests.providers.fake_apis import binance_bars
from tests.providers.fake_binance_archive import FakeArchive, archive_csv, exchange_route

DAY = 86_400
JAN_2025 = 1_735_689_600
JAN_2026 = 1_767_225_600
OCT_2024 = 1_727_740_800
APR_2025 = 1_743_465_600
NOW = 1_795_176_000.0  # 2026-11-20T12:00:00Z: every month up to 2026-10 is archived
EARLY_NOVEMBER = 1_793_880_000.0  # 2026-11-05T12:00:00Z: October's month archive not out yet
FAST = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002)
SYMBOLS = ["BTC/USDT", "ETH/USDT"]


@pytest.fixture
def archive() -> FakeArchive:
    return FakeArchive()


@pytest.fixture
def exchange(archive: FakeArchive) -> Iterator[KeepAliveRunning]:
    yield from serve_keep_alive(exchange_route(archive))


def provider(api: KeepAliveRunning, source: str = "auto", now: float = NOW, **options: object) -> BinanceProvider:
    return BinanceProvider({"base_url": api.url, "archive_url": api.url, "rate_limit": 0, "timeout_s": 5,
                            "source": source, **options}, clock=lambda: now)


def collect(p: BinanceProvider, data: Path, symbols: list[str], tf: str, start: int, end: int,
            now: float = NOW) -> list[object]:
    try:
        results = ProcessingEngine(p, CsvStore(data), workers=2, retry=FAST, now=lambda: now
                                   ).process_batch(symbols, tf, start, end)
    finally:
        p.close()
    assert [r.status for r in results] == ["completed"] * len(symbols), [r.error for r in results]
    return list(results)


def files(data: Path) -> dict[str, bytes]:
    return {str(f.relative_to(data)): f.read_bytes() for f in sorted(data.rglob("*.csv"))}


def gets(api: KeepAliveRunning, prefix: str) -> list[str]:
    return [r.path for r in api.api.paths(prefix)]


# --- which archives, and reading them ----------------------------------------------------------


def test_archive_periods_and_when_they_are_out() -> None:
    jan = month_of(JAN_2025 + 5 * DAY)
    assert (jan.start, jan.end, jan.label, jan.daily) == (JAN_2025, JAN_2025 + 31 * DAY, "2025-01", False)
    assert jan.path("BTCUSDT", "1m") == "data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2025-01.zip"
    day = day_of(JAN_2025 + 5 * DAY + 7)
    assert day.path("BTCUSDT", "1m") == "data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2025-01-06.zip"
    assert not jan.ready(jan.end + 8 * DAY - 1) and jan.ready(jan.end + 8 * DAY)  # "first Monday", a day spare
    assert not day.ready(day.end + DAY - 1) and day.ready(day.end + DAY)  # "the next day", with a day spare
    dec = month_of(JAN_2025 - 1)
    assert (dec.start, dec.end) == (JAN_2025 - 31 * DAY, JAN_2025)


def test_ready_archives_months_then_days_of_a_month_not_archived_yet() -> None:
    oct_2026 = month_of(int(EARLY_NOVEMBER) - 10 * DAY)
    found = list(ready_archives(oct_2026.start - 30 * DAY, int(EARLY_NOVEMBER), EARLY_NOVEMBER))
    assert [a.label for a in found] == ["2026-09"] + [f"2026-10-{d:02d}" for d in range(1, 32)] + \
        ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert holding(oct_2026.start, oct_2026.start + 3600, EARLY_NOVEMBER) == day_of(oct_2026.start)
    assert holding(oct_2026.start, oct_2026.end - 60, EARLY_NOVEMBER) is None  # the month is not out
    assert holding(oct_2026.start, oct_2026.end - 60, NOW) == oct_2026


def test_timestamps_in_milliseconds_and_microseconds() -> None:
    assert to_seconds(1_735_689_540_000) == 1_735_689_540  # 2024-12-31T23:59Z in ms
    assert to_seconds(1_735_689_600_000_000) == 1_735_689_600  # 2025-01-01T00:00Z in µs
    assert to_seconds(1_502_942_400_000) == 1_502_942_400
    rows = archive_csv("BTCUSDT", "1m", JAN_2025 - 120, JAN_2025 + 120).decode().splitlines()
    assert [len(r.split(",")[0]) for r in rows] == [13, 13, 16, 16]
    assert parse_csv("\n".join(rows)) == binance_bars("BTCUSDT", "1m", JAN_2025 - 120, JAN_2025 + 120)


def test_a_header_line_is_skipped_and_a_bad_row_refuses_the_archive() -> None:
    text = archive_csv("BTCUSDT", "1h", JAN_2025, JAN_2025 + 3 * 3600, header=True).decode()
    assert parse_csv(text) == binance_bars("BTCUSDT", "1h", JAN_2025, JAN_2025 + 3 * 3600)
    with pytest.raises(ArchiveUnavailable, match="malformed archive row 2"):
        parse_csv("1735689600000000,1,2,0.5,1.5,10\n1735693200000000,1,2,oops,1.5,10\n")


def test_checksum_files() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert parse_checksum(f"{digest}  BTCUSDT-1m-2025-01.zip\n".encode()) == digest
    assert parse_checksum(digest.upper().encode()) == digest
    with pytest.raises(ArchiveUnavailable, match="unreadable CHECKSUM"):
        parse_checksum(b"<html>not found</html>")


def test_options_are_checked() -> None:
    with pytest.raises(ProviderUnavailableError, match="source must be auto, api or archive, not 'ftp'"):
        BinanceProvider({"source": "ftp"})
    p = BinanceProvider({})
    assert p.options["source"] == "auto" and p.options["archive_url"] == "https://data.binance.vision"
    assert isinstance(p.calendar, ArchiveCalendar)
    assert not isinstance(BinanceProvider({"source": "api"}).calendar, ArchiveCalendar)


# --- planning: archives are segments like any other --------------------------------------------


def test_a_past_year_of_1m_is_twelve_segments() -> None:
    p = BinanceProvider({"source": "auto"}, clock=lambda: NOW)
    segments = p.calendar.split("1m", JAN_2025, JAN_2026, p.max_bars)
    assert len(segments) == 12
    assert segments[0] == (JAN_2025, JAN_2025 + 31 * DAY) and segments[-1][1] == JAN_2026
    api_only = BinanceProvider({"source": "api"}, clock=lambda: NOW)
    assert len(api_only.calendar.split("1m", JAN_2025, JAN_2026, 1000)) == 526  # 525,600 bars


def test_plans_tile_the_range_and_use_archives_only_where_they_save_requests() -> None:
    p = BinanceProvider({"source": "auto"}, clock=lambda: NOW)
    start, end = JAN_2025 + 15 * DAY + 7 * 3600, JAN_2025 + 31 * DAY + 3 * DAY + 600  # mid-Jan to Feb 4
    segments = p.calendar.split("1m", start, end, 1000)
    assert segments[0] == (start, JAN_2025 + 31 * DAY)  # the rest of January: its month archive
    assert all(a[1] == b[0] for a, b in zip(segments, segments[1:], strict=False)) and segments[-1][1] == end
    assert segments[1:] == [(JAN_2025 + 31 * DAY, end)]  # Feb's first 4330 bars (5 API requests): its archive
    assert len(p.calendar.split("1m", JAN_2025 + 31 * DAY, JAN_2025 + 31 * DAY + 900 * 60, 1000)) == 1  # 1 request
    assert len(p.calendar.split("1h", JAN_2025, JAN_2026, 1000)) == 9  # 744 bars a month: the API is cheaper
    every = BinanceProvider({"source": "archive"}, clock=lambda: NOW)
    assert len(every.calendar.split("1h", JAN_2025, JAN_2026, 1000)) == 12  # source=archive: every month
    assert every.calendar.split("1w", JAN_2025, JAN_2026, 1000) == p.calendar.split("1w", JAN_2025, JAN_2026, 1000)


def test_before_the_listing_the_plan_still_covers_the_whole_range() -> None:
    p = BinanceProvider({"source": "auto"}, clock=lambda: NOW)
    start = 1_498_867_200  # 2017-07-01, before Binance's first day (2017-07-14)
    segments = p.calendar.split("1m", start, 1_504_224_000, 1000)  # to 2017-09-01
    assert segments[0][0] == start and segments[-1][1] == 1_504_224_000
    assert len(segments) == 2  # July (from the floor) and August, one archive each


# --- whole jobs: identical to the API, far fewer requests ----------------------------------------


def test_months_through_auto_store_what_the_api_path_stores(exchange: KeepAliveRunning, tmp_path: Path) -> None:
    """Six months across the ms/µs switch; 5m (8,928 bars a month) keeps the API run short, and the 1m
    plan is the same (one segment a month, test_a_past_year_of_1m_is_twelve_segments)."""
    auto = collect(provider(exchange), tmp_path / "auto", SYMBOLS, "5m", OCT_2024, APR_2025)
    archived = gets(exchange, "/data/")
    assert len(gets(exchange, "/api/")) == 0
    months = [(2024, k) for k in range(10, 13)] + [(2025, k) for k in range(1, 4)]
    assert sorted(archived) == sorted(f"/data/spot/monthly/klines/{m}/5m/{m}-5m-{y}-{mo:02d}.zip{suffix}"
                                      for m in ("BTCUSDT", "ETHUSDT") for y, mo in months
                                      for suffix in ("", ".CHECKSUM"))
    assert [r.requests for r in auto] == [6, 6]  # type: ignore[attr-defined]
    assert exchange.connections <= 2  # kept alive: one per worker
    api = collect(provider(exchange, source="api"), tmp_path / "api", SYMBOLS, "5m", OCT_2024, APR_2025)
    assert [r.requests for r in api] == [53, 53]  # type: ignore[attr-defined]
    assert files(tmp_path / "auto") == files(tmp_path / "api")  # byte for byte, across the ms/µs switch
    assert CsvStore(tmp_path / "auto").read("binance", "5m", "ETH/USDT") == binance_bars(
        "ETHUSDT", "5m", OCT_2024, APR_2025)


def test_the_current_month_from_daily_archives_then_the_api(exchange: KeepAliveRunning, tmp_path: Path) -> None:
    start, end = 1_790_812_800, int(EARLY_NOVEMBER) - 3600  # 2026-10-01 .. 2026-11-05T11:00Z
    collect(provider(exchange, now=EARLY_NOVEMBER), tmp_path / "auto", ["BTC/USDT"], "1m", start, end,
            now=EARLY_NOVEMBER)
    archived = {p.rsplit("-1m-", 1)[1] for p in gets(exchange, "/data/") if p.endswith(".zip")}
    assert archived == {f"2026-10-{d:02d}.zip" for d in range(1, 32)} | {f"2026-11-0{d}.zip" for d in (1, 2, 3)}
    api_requests = exchange.api.paths("/api/")
    assert len(api_requests) == 3  # Nov 4 and the 11 hours of Nov 5: 2100 bars
    assert int(api_requests[0].params["startTime"]) == (start + 34 * DAY) * 1000
    collect(provider(exchange, source="api", now=EARLY_NOVEMBER), tmp_path / "api", ["BTC/USDT"], "1m", start,
            end, now=EARLY_NOVEMBER)
    assert files(tmp_path / "auto") == files(tmp_path / "api")


@pytest.mark.parametrize("trouble", ["corrupt", "missing"])
def test_a_corrupt_or_missing_archive_is_fetched_from_the_api(
        exchange: KeepAliveRunning, archive: FakeArchive, tmp_path: Path, trouble: str,
        caplog: pytest.LogCaptureFixture) -> None:
    getattr(archive, trouble).add("BTCUSDT-5m-2025-02.zip")
    collect(provider(exchange), tmp_path / "auto", ["BTC/USDT"], "5m", JAN_2025, JAN_2025 + 59 * DAY)
    api_requests = exchange.api.paths("/api/")
    assert len(api_requests) == 9  # February's 8,064 bars, 1000 at a time
    assert all(JAN_2025 + 31 * DAY <= int(r.params["startTime"]) // 1000 < JAN_2025 + 59 * DAY
               for r in api_requests)
    reason = "checksum mismatch" if trouble == "corrupt" else "no such archive .HTTP 404"
    assert any("BTCUSDT-5m-2025-02.zip not used" in m and __import__("re").search(reason, m)
               for m in caplog.messages)
    collect(provider(exchange, source="api"), tmp_path / "api", ["BTC/USDT"], "5m", JAN_2025, JAN_2025 + 59 * DAY)
    assert files(tmp_path / "auto") == files(tmp_path / "api")


def test_source_api_never_asks_the_archive_host(exchange: KeepAliveRunning, tmp_path: Path) -> None:
    collect(provider(exchange, source="api"), tmp_path / "api", ["BTC/USDT"], "1m", JAN_2025, JAN_2025 + 3 * DAY)
    assert gets(exchange, "/data/") == [] and len(gets(exchange, "/api/")) == 5


def test_source_archive_reads_small_months_too(exchange: KeepAliveRunning, tmp_path: Path) -> None:
    collect(provider(exchange, source="archive"), tmp_path / "a", ["SOL/USDT"], "1h", JAN_2025, JAN_2025 + 90 * DAY)
    assert len(gets(exchange, "/data/")) == 6 and gets(exchange, "/api/") == []
    assert CsvStore(tmp_path / "a").read("binance", "1h", "SOL/USDT") == binance_bars(
        "SOLUSDT", "1h", JAN_2025, JAN_2025 + 90 * DAY)


def test_a_cancelled_archive_read_returns_nothing(exchange: KeepAliveRunning) -> None:
    p = provider(exchange)
    token = CancellationToken()
    token.cancel()
    try:
        assert p.fetch("BTC/USDT", "1m", JAN_2025, JAN_2025 + 31 * DAY, token) == []
    finally:
        p.close()
    assert exchange.api.requests == []


def test_cli_start_with_archive_options(home: Path, exchange: KeepAliveRunning) -> None:
    args = ["start", "BTC/USDT", "-p", "binance", "-t", "1m", "--start", "2025-01-01", "--end", "2025-03-01",
            "-o", f"base_url={exchange.url}", "-o", f"archive_url={exchange.url}", "-o", "rate_limit=0",
            "-o", "source=auto", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    final = json.loads(r.stdout.splitlines()[-1])
    assert final["status"] == "completed" and final["requests"] == 2 and final["candles"] == 59 * 1440
    assert CsvStore(home / "data").read("binance", "1m", "BTC/USDT") == binance_bars(
        market_id("BTC/USDT"), "1m", JAN_2025, JAN_2025 + 59 * DAY)
    bad = CliRunner().invoke(app, [*args[:-3], "-o", "source=ftp"])
    assert bad.exit_code == 1 and "source must be auto, api or archive" in bad.stderr
