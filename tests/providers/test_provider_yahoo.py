"""The yahoo provider against a local server answering like query2.finance.yahoo.com, for
symbols on several exchanges (fake_yahoo): session dates, calendars, quirks, publication."""

from __future__ import annotations

import sys
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
from ktrdr_collect.providers import http
from ktrdr_collect.providers.base import PermanentError, RateLimitedError, TransientError, UnknownSymbolError
from ktrdr_collect.providers.yahoo import YahooProvider, parse_chart
from ktrdr_collect.storage.calendar import SessionCalendar
from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.timeframes import parse_ts
from tests.providers.fake_apis import Running, garbage, status
from tests.providers.fake_yahoo import (
    Listing,
    YahooMarket,
    expected_daily,
    expected_intraday,
    price,
    serve_market,
)

FAST = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002)
DAY = 86400
THANKSGIVING_FRIDAY = date(2024, 11, 29)  # NYSE closes at 13:00

LISTINGS = {x.symbol: x for x in (
    Listing("AAPL", "America/New_York", early_closes={THANKSGIVING_FRIDAY: "13:00"}, first_trade=345_479_400,
            holidays=frozenset({date(2024, 7, 4)})),
    Listing("600000.SS", "Asia/Shanghai", "09:30", "15:00", "SHH"),
    Listing("WSKT.JK", "Asia/Jakarta", "09:00", "16:00", "JKT"),
    Listing("OCDO.L", "Europe/London", "08:00", "16:30", "LSE"),
    Listing("BHP.AX", "Australia/Sydney", "10:00", "16:00", "ASX"),
    Listing("0700.HK", "Asia/Hong_Kong", "09:30", "16:00", "HKG"),
    Listing("RELIANCE.NS", "Asia/Kolkata", "09:15", "15:30", "NSI"),
    Listing("EURUSD=X", "Europe/London", "00:00", "23:59", "CCY", daily_at_midnight=True,
            weekdays=frozenset({0, 1, 2, 3, 4})),
    Listing("CLOSEPRT", "America/New_York", closing_print=True),
    Listing("EARLY", "America/New_York", early_closes={THANKSGIVING_FRIDAY: "13:00"},
            post_market_on_early_close=True),
    Listing("EARLYNOTP", "America/New_York", early_closes={THANKSGIVING_FRIDAY: "13:00"},
            post_market_on_early_close=True, trading_periods=False),
    Listing("THIRTY", "America/New_York", thirty_as_sixty=True),
    Listing("WEEKLY", "America/New_York", weekly_anchor_on_period1=True),
    Listing("HALTED", "America/New_York",
            halted=frozenset({parse_ts("2024-03-05T15:30:00Z"), parse_ts("2024-03-06T14:30:00Z")})),
)}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(parse_ts("2024-12-20T12:00:00Z"))


@pytest.fixture
def market(clock: Clock) -> YahooMarket:
    return YahooMarket(dict(LISTINGS), clock)


@pytest.fixture
def yahoo(market: YahooMarket) -> Iterator[Running]:
    yield from serve_market(market)


def provider(api: Running, clock: Clock, **options: object) -> YahooProvider:
    return YahooProvider({"base_url": api.url, "rate_limit": 0, "timeout_s": 5, "client": "stdlib", **options},
                         clock=clock)


def fetch(api: Running, clock: Clock, symbol: str, tf: str, start: str, end: str, **options: object) -> list:
    return provider(api, clock, **options).fetch(symbol, tf, parse_ts(start), parse_ts(end), CancellationToken())


# --- session dates ------------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", ["AAPL", "600000.SS", "WSKT.JK", "OCDO.L", "BHP.AX", "0700.HK", "RELIANCE.NS"])
def test_daily_bars_are_stored_at_midnight_utc_of_the_exchanges_session_date(
        yahoo: Running, clock: Clock, symbol: str) -> None:
    bars = fetch(yahoo, clock, symbol, "1d", "2017-11-13", "2017-11-25")
    listing = LISTINGS[symbol]
    assert bars == expected_daily(listing, parse_ts("2017-11-13"), parse_ts("2017-11-25"))
    assert [b[0] % DAY for b in bars] == [0] * 10  # two weeks of Monday..Friday, every stamp a date
    assert {date.fromtimestamp(b[0] + 12 * 3600).weekday() for b in bars} <= {0, 1, 2, 3, 4}


def test_a_shanghai_monday_is_stored_as_monday_not_the_sunday_before(yahoo: Running, clock: Clock) -> None:
    bars = fetch(yahoo, clock, "600000.SS", "1d", "2017-11-20", "2017-11-21")
    assert [b[0] for b in bars] == [parse_ts("2017-11-20")]  # its instant is 2017-11-20T01:30Z
    assert bars[0][1:] == price("600000.SS", parse_ts("2017-11-20T01:30:00Z"))


def test_london_midnight_fx_in_british_summer_time_keeps_its_date(yahoo: Running, clock: Clock) -> None:
    bars = fetch(yahoo, clock, "EURUSD=X", "1d", "2024-07-01", "2024-07-06")
    assert [b[0] for b in bars] == [parse_ts(f"2024-07-0{d}") for d in range(1, 6)]
    assert bars[0][1:] == price("EURUSD=X", parse_ts("2024-06-30T23:00:00Z"))  # 00:00 BST


def test_weekly_bars_are_stamped_on_monday_and_asked_from_a_monday(yahoo: Running, clock: Clock) -> None:
    bars = fetch(yahoo, clock, "WEEKLY", "1w", "2024-03-06", "2024-04-01")  # starts on a Wednesday
    assert [b[0] for b in bars] == [parse_ts(d) for d in ("2024-03-11", "2024-03-18", "2024-03-25")]
    period1 = int(yahoo.api.requests[-1].params["period1"])
    assert period1 == parse_ts("2024-03-04T05:00:00Z")  # Monday 00:00 New York: buckets anchor on Mondays
    week = [parse_ts(f"2024-03-{d:02d}T13:30:00Z") for d in range(11, 16)]
    values = [price("WEEKLY", ts) for ts in week]
    assert bars[0][1:] == (values[0][0], max(v[1] for v in values), min(v[2] for v in values), values[-1][3],
                           sum(v[4] for v in values))


def test_head_timestamp_is_the_session_date_of_the_first_trade(yahoo: Running, clock: Clock) -> None:
    p = provider(yahoo, clock)
    assert p.head_timestamp("AAPL", "1d") == parse_ts("1980-12-12")  # firstTradeDate 1980-12-12T14:30Z


# --- calendars ----------------------------------------------------------------------------------


def test_each_symbol_is_planned_with_its_own_exchanges_calendar(yahoo: Running, clock: Clock) -> None:
    p = provider(yahoo, clock, holidays="on")
    week = (parse_ts("2024-09-30"), parse_ts("2024-10-09"))
    shanghai = list(p.calendar_for("600000.SS").bar_times("1d", *week))
    assert shanghai == [parse_ts("2024-09-30"), parse_ts("2024-10-08")]  # Golden Week closed
    new_york = list(p.calendar_for("AAPL").bar_times("1d", *week))
    assert len(new_york) == 7  # New York trades every weekday
    july4 = (parse_ts("2024-07-04"), parse_ts("2024-07-05"))
    assert list(p.calendar_for("600000.SS").bar_times("1d", *july4)) == [july4[0]]
    assert list(p.calendar_for("AAPL").bar_times("1d", *july4)) == []
    opens = next(iter(p.calendar_for("0700.HK").bar_times("1h", parse_ts("2024-10-02"), parse_ts("2024-10-03"))))
    assert opens == parse_ts("2024-10-02T01:30:00Z")  # 09:30 Hong Kong


def test_without_exchange_calendars_the_exchanges_own_weekdays_and_hours(yahoo: Running, clock: Clock,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    p = provider(yahoo, clock, holidays="off")
    cal = p.calendar_for("WSKT.JK")
    assert isinstance(cal, SessionCalendar) and cal.tz == "Asia/Jakarta"
    day = list(cal.bar_times("1h", parse_ts("2024-10-01"), parse_ts("2024-10-02")))
    assert day[0] == parse_ts("2024-10-01T02:00:00Z")  # 09:00 Jakarta, never 09:30 New York
    monkeypatch.setitem(sys.modules, "exchange_calendars", None)  # import fails
    with pytest.raises(ProviderUnavailableError, match=r"holidays need exchange_calendars: pip install"):
        provider(yahoo, clock, holidays="on")


def test_a_symbol_of_an_unknown_exchange_never_has_a_range_skipped(yahoo: Running, clock: Clock) -> None:
    cal = provider(yahoo, clock).calendar_for("XYZ.QQ")
    weekend = list(cal.bar_times("1d", parse_ts("2024-10-05"), parse_ts("2024-10-07")))
    assert weekend == [parse_ts("2024-10-05"), parse_ts("2024-10-06")]


# --- quirks -------------------------------------------------------------------------------------


def test_intraday_bars_of_a_non_us_exchange_keep_their_instants(yahoo: Running, clock: Clock) -> None:
    start, end = parse_ts("2024-12-02"), parse_ts("2024-12-03")
    bars = fetch(yahoo, clock, "600000.SS", "1h", "2024-12-02", "2024-12-03")
    assert bars == expected_intraday(LISTINGS["600000.SS"], 3600, start, end)
    assert bars[0][0] == parse_ts("2024-12-02T01:30:00Z")


def test_closing_print_is_dropped_however_the_window_is_split(yahoo: Running, clock: Clock) -> None:
    whole = fetch(yahoo, clock, "CLOSEPRT", "5m", "2024-12-02T14:30:00Z", "2024-12-02T22:00:00Z")
    to_close = fetch(yahoo, clock, "CLOSEPRT", "5m", "2024-12-02T14:30:00Z", "2024-12-02T21:00:00Z")
    past = fetch(yahoo, clock, "CLOSEPRT", "5m", "2024-12-02T21:00:00Z", "2024-12-02T22:00:00Z")
    assert whole == to_close + past == to_close
    assert len(whole) == 78 and whole[-1][0] == parse_ts("2024-12-02T20:55:00Z")


@pytest.mark.parametrize("symbol", ["EARLY", "EARLYNOTP"])
def test_post_market_bars_of_an_early_close_are_dropped(yahoo: Running, clock: Clock, symbol: str) -> None:
    bars = fetch(yahoo, clock, symbol, "15m", "2024-11-29", "2024-11-30", holidays="on")
    assert bars[-1][0] == parse_ts("2024-11-29T17:45:00Z")  # last bar 12:45, the session ends at 13:00
    assert len(bars) == 14


def test_halted_rows_with_null_prices_are_skipped(yahoo: Running, clock: Clock) -> None:
    bars = fetch(yahoo, clock, "HALTED", "1h", "2024-03-05", "2024-03-07")
    stamps = [b[0] for b in bars]
    assert parse_ts("2024-03-05T15:30:00Z") not in stamps and parse_ts("2024-03-06T14:30:00Z") not in stamps
    assert len(bars) == 12


def test_thirty_minute_bars_answered_as_sixty_are_built_from_fifteen(yahoo: Running, clock: Clock) -> None:
    bars = fetch(yahoo, clock, "THIRTY", "30m", "2024-12-02", "2024-12-03")
    assert [r.params["interval"] for r in yahoo.api.requests] == ["30m", "15m"]
    assert len(bars) == 13 and bars[0][0] == parse_ts("2024-12-02T14:30:00Z")
    assert all(b[0] - a[0] == 1800 for a, b in zip(bars, bars[1:], strict=False))
    q1, q2 = (price("THIRTY", parse_ts(t)) for t in ("2024-12-02T14:30:00Z", "2024-12-02T14:45:00Z"))
    assert bars[0][1:] == (q1[0], max(q1[1], q2[1]), min(q1[2], q2[2]), q2[3], q1[4] + q2[4])


def test_a_plain_thirty_minute_answer_is_taken_as_it_is(yahoo: Running, clock: Clock) -> None:
    bars = fetch(yahoo, clock, "AAPL", "30m", "2024-12-02", "2024-12-03")
    assert [r.params["interval"] for r in yahoo.api.requests] == ["30m"]
    assert bars == expected_intraday(LISTINGS["AAPL"], 1800, parse_ts("2024-12-02"), parse_ts("2024-12-03"))


# --- errors -------------------------------------------------------------------------------------


def test_unknown_symbol_from_404(yahoo: Running, clock: Clock) -> None:
    with pytest.raises(UnknownSymbolError, match="No data found"):
        fetch(yahoo, clock, "NOPE", "1d", "2024-01-01", "2024-02-01")


def test_429_without_the_browser_client_fails_at_once_saying_what_to_install(yahoo: Running, clock: Clock) -> None:
    yahoo.queue(status(429, text="Too Many Requests"))
    with pytest.raises(PermanentError) as info:
        fetch(yahoo, clock, "AAPL", "1d", "2024-01-01", "2024-02-01")
    assert "Yahoo blocks clients that are not browsers" in str(info.value)
    assert "pip install 'ktrdr-collect[yahoo]'" in str(info.value)


def test_429_with_the_browser_client_is_a_rate_limit(yahoo: Running, clock: Clock) -> None:
    pytest.importorskip("curl_cffi")
    yahoo.queue(status(429, text="Too Many Requests", headers={"Retry-After": "2"}))
    with pytest.raises(RateLimitedError) as info:
        fetch(yahoo, clock, "AAPL", "1d", "2024-01-01", "2024-02-01", client="browser")
    assert info.value.retry_after == 2.0


def test_a_symbol_never_waits_on_rate_limits_longer_than_the_bound(yahoo: Running, clock: Clock,
                                                                    tmp_path: Path) -> None:
    pytest.importorskip("curl_cffi")
    yahoo.queue(*[status(429, text="Too Many Requests", headers={"Retry-After": "0.02"})] * 50)
    p = provider(yahoo, clock, client="browser")
    retry = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002, max_throttle_wait_s=0.1)
    engine = ProcessingEngine(p, CsvStore(tmp_path), workers=1, retry=retry, now=clock)
    [result] = engine.process_batch(["AAPL"], "1d", "2024-01-01", "2024-02-01")
    assert result.status == "failed"
    assert "giving up" in (result.error or "") and len(yahoo.api.requests) == 6  # 5 waits of 0.02 s fit


def test_one_minute_windows_are_split_into_calls_yahoo_accepts(yahoo: Running, clock: Clock) -> None:
    clock.now = parse_ts("2024-12-20T23:00:00Z")
    bars = fetch(yahoo, clock, "AAPL", "1m", "2024-12-02", "2024-12-18")
    spans = [int(r.params["period2"]) - int(r.params["period1"]) for r in yahoo.api.requests]
    assert len(spans) == 3 and max(spans) <= 7 * DAY
    assert bars == expected_intraday(LISTINGS["AAPL"], 60, parse_ts("2024-12-02"), parse_ts("2024-12-18"))


def test_422_is_permanent_with_its_description(yahoo: Running, clock: Clock) -> None:
    p = provider(yahoo, clock)
    p.windows = lambda tf, start, end: [(start, end)]  # type: ignore[method-assign]
    with pytest.raises(PermanentError, match=r"Only 8 days worth of 1m .*HTTP 422"):
        p.fetch("AAPL", "1m", parse_ts("2024-12-02"), parse_ts("2024-12-12"), CancellationToken())


@pytest.mark.parametrize("code", [500, 502, 503])
def test_server_trouble_is_transient(yahoo: Running, clock: Clock, code: int) -> None:
    yahoo.queue(status(code, text="oops"))
    with pytest.raises(TransientError, match=f"HTTP {code}"):
        fetch(yahoo, clock, "AAPL", "1d", "2024-01-01", "2024-02-01")


def test_client_option_is_checked(yahoo: Running, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ProviderUnavailableError, match="client must be auto, browser or stdlib"):
        provider(yahoo, clock, client="netscape")
    monkeypatch.setattr(http, "browser_client_available", lambda: False)
    with pytest.raises(ProviderUnavailableError, match=r"needs curl_cffi: pip install 'ktrdr-collect\[yahoo\]'"):
        provider(yahoo, clock, client="browser")
    assert provider(yahoo, clock, client="auto").client == "stdlib"


def test_garbage_is_transient(yahoo: Running, clock: Clock) -> None:
    yahoo.queue(garbage())
    with pytest.raises(Exception, match="malformed JSON"):
        fetch(yahoo, clock, "AAPL", "1d", "2024-01-01", "2024-02-01")


def test_parse_chart_reads_the_real_shape() -> None:
    body = {"chart": {"result": [{"meta": {"exchangeTimezoneName": "Asia/Jakarta"}, "timestamp": [1577930400],
                                  "indicators": {"quote": [{"volume": [None], "close": [1505], "low": [1480],
                                                            "open": [1485], "high": [1515]}]}}], "error": None}}
    assert parse_chart(body) == [(1577930400, 1485.0, 1515.0, 1480.0, 1505.0, 0.0)]


# --- whole jobs ---------------------------------------------------------------------------------


def test_a_job_stores_exactly_the_exchanges_bars_then_asks_nothing(yahoo: Running, clock: Clock,
                                                                    tmp_path: Path) -> None:
    start, end = parse_ts("2023-01-01"), parse_ts("2024-01-01")
    p = provider(yahoo, clock)
    p.max_bars = 100
    store = CsvStore(tmp_path)
    symbols = ["AAPL", "600000.SS", "WSKT.JK", "OCDO.L", "BHP.AX"]
    results = ProcessingEngine(p, store, workers=3, retry=FAST, now=clock).process_batch(symbols, "1d", start, end)
    assert [r.status for r in results] == ["completed"] * 5
    for symbol in symbols:
        assert store.read("yahoo", "1d", symbol) == expected_daily(LISTINGS[symbol], start, end), symbol
    made = len(yahoo.api.requests)
    again = ProcessingEngine(p, store, workers=3, retry=FAST, now=clock).process_batch(symbols, "1d", start, end)
    assert [r.status for r in again] == ["completed"] * 5
    assert len(yahoo.api.requests) == made


@pytest.mark.parametrize("fake_delay_min", [20, 35])
def test_bars_published_late_are_fetched_by_the_next_run_never_left_as_holes(
        market: YahooMarket, yahoo: Running, clock: Clock, tmp_path: Path, fake_delay_min: int) -> None:
    """16:05 New York: the fake has published bars only up to `fake_delay_min` ago. A run then,
    and one at 16:25 and 17:00, must end with the whole session stored."""
    market.delay_s = fake_delay_min * 60
    store = CsvStore(tmp_path)
    day = (parse_ts("2024-12-02"), parse_ts("2024-12-03"))
    p = provider(yahoo, clock)

    def run(at: str) -> None:
        clock.now = parse_ts(at)
        engine = ProcessingEngine(p, store, workers=1, retry=FAST, now=clock)
        [result] = engine.process_batch(["AAPL"], "5m", day[0], day[1])
        assert result.status == "completed"

    run("2024-12-02T21:05:00Z")
    first = store.read("yahoo", "5m", "AAPL")
    assert first and first[-1][0] < parse_ts("2024-12-02T20:55:00Z")
    for at in ("2024-12-02T21:25:00Z", "2024-12-02T22:00:00Z"):
        run(at)
    assert store.read("yahoo", "5m", "AAPL") == expected_intraday(LISTINGS["AAPL"], 300, *day)


def test_old_new_york_dated_files_are_converted_the_first_time_a_job_touches_them(
        yahoo: Running, clock: Clock, tmp_path: Path) -> None:
    """Up to 0.1, Jakarta's 2020-01-02 bar was stored at 2020-01-01T14:30Z (its New York date)."""
    store = CsvStore(tmp_path)
    start, end = parse_ts("2019-12-23"), parse_ts("2020-01-11")
    truth = expected_daily(LISTINGS["WSKT.JK"], start, end)
    old = [((b[0] // DAY - 1) * DAY + 14 * 3600 + 30 * 60, *b[1:]) for b in truth]  # NY date, 09:30 EST
    store.write("yahoo", "1d", "WSKT.JK", old, (old[0][0], old[-1][0] + 1))
    p = provider(yahoo, clock)
    [result] = ProcessingEngine(p, store, workers=1, retry=FAST, now=clock).process_batch(["WSKT.JK"], "1d",
                                                                                          start, end)
    assert result.status == "completed"
    assert store.read("yahoo", "1d", "WSKT.JK") == truth
    assert result.candles <= 2  # only the edges of the old range were fetched again


def test_an_old_file_that_cannot_be_converted_is_kept_aside_and_fetched_again(
        yahoo: Running, clock: Clock, tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    old = [(parse_ts("2024-01-02T14:30:00Z"), 1.0, 2.0, 0.5, 1.5, 10.0)]
    store.write("yahoo", "1d", "XYZ.QQ", old, (old[0][0], old[0][0] + 1))
    p = provider(yahoo, clock)
    ProcessingEngine(p, store, workers=1, retry=FAST, now=clock).process_batch(["XYZ.QQ"], "1d", "2024-01-01",
                                                                              "2024-01-05")
    assert (tmp_path / "yahoo" / "1d" / "XYZ.QQ.csv.legacy").read_text().count("\n") == 2
    assert store.coverage("yahoo", "1d", "XYZ.QQ") == []  # unknown symbol: nothing recorded


def test_cli_refuses_windows_yahoo_cannot_serve_before_any_job(home: Path) -> None:
    r = CliRunner().invoke(app, ["start", "AAPL", "-p", "yahoo", "-t", "1m", "--days", "45"])
    assert r.exit_code == 1
    assert "yahoo serves 1m bars only for the last 30 days" in r.output
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())
