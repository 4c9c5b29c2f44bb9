"""Yahoo's corporate actions: `events=div,splits` read and stored beside the data, `-o adjust=`,
and restatement when a split (or, with adjust=all, a dividend) changes bars already stored."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from ktrdr_collect.engine.cancellation import CancellationToken
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.engine.pipeline import RetryPolicy
from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.providers.yahoo import YahooProvider, parse_events, zone
from ktrdr_collect.storage.actions import read_actions
from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.store import Store
from ktrdr_collect.storage.timeframes import parse_ts
from ktrdr_collect.storage.verify import scale_findings, stored_splits
from tests.providers.fake_apis import Handler, Running, status
from tests.providers.fake_yahoo import Listing, YahooMarket, serve_market

FAST = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002)
SPLIT_DAY = date(2024, 6, 10)
SPLIT = parse_ts("2024-06-10")
START, FIRST_END, SECOND_END = parse_ts("2024-01-02"), parse_ts("2024-06-08"), parse_ts("2024-07-01")
BEFORE, AFTER = parse_ts("2024-06-08T12:00:00Z"), parse_ts("2024-07-02T12:00:00Z")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(BEFORE)


@pytest.fixture
def market(clock: Clock) -> YahooMarket:
    listings = [
        Listing("NVDA", "America/New_York", price_scale=10.0, splits={SPLIT_DAY: 10.0}),
        Listing("QUIET", "America/New_York", price_scale=10.0, splits={SPLIT_DAY: 10.0}, events=False),
        Listing("MSFT", "America/New_York", price_scale=5.0, dividends={date(2024, 2, 14): 0.75,
                                                                         date(2024, 6, 12): 0.75}),
    ]
    return YahooMarket({x.symbol: x for x in listings}, clock)


@pytest.fixture
def yahoo(market: YahooMarket) -> Iterator[Running]:
    yield from serve_market(market)


def provider(api: Running, clock: Clock, **options: object) -> YahooProvider:
    return YahooProvider({"base_url": api.url, "rate_limit": 0, "timeout_s": 5, "client": "stdlib", **options},
                         clock=clock)


def run(api: Running, clock: Clock, store: Store, symbol: str, end: int, start: int = START,
        **options: object) -> tuple[int, int]:
    """One job; (candles, requests) of the symbol."""
    engine = ProcessingEngine(provider(api, clock, **options), store, workers=1, retry=FAST, now=clock)
    [result] = engine.process_batch([symbol], "1d", start, end)
    assert result.status == "completed", result.error
    return result.candles, result.requests


def closes(store: Store, symbol: str) -> list[float]:
    return [bar[4] for bar in store.read("yahoo", "1d", symbol)]


# --- reading events -----------------------------------------------------------------------------


def test_events_in_the_real_shape_are_dated_by_session_date() -> None:
    """As recorded from query2.finance.yahoo.com (AAPL, 2020-08-31 to 2020-11-07)."""
    result = {"events": {
        "dividends": {"1604673000": {"amount": 0.205, "date": 1604673000}},
        "splits": {"1598880600": {"date": 1598880600, "numerator": 4, "denominator": 1, "splitRatio": "4:1"}}}}
    assert parse_events(result, zone("America/New_York")) == [
        (parse_ts("2020-08-31"), "split", 4.0), (parse_ts("2020-11-06"), "dividend", 0.205)]
    reverse = {"events": {"splits": {"1": {"date": 1598880600, "splitRatio": "1:10"}},
                          "dividends": {"2": {"amount": "x", "date": 1}, "3": None}}}
    assert parse_events(reverse, zone("America/New_York")) == [(parse_ts("2020-08-31"), "split", 0.1)]
    assert parse_events({"events": []}, zone("UTC")) == []


def test_requests_ask_for_events_and_the_provider_hands_them_over_once(yahoo: Running, clock: Clock) -> None:
    clock.now = AFTER
    p = provider(yahoo, clock)
    p.fetch("NVDA", "1d", parse_ts("2024-06-03"), parse_ts("2024-06-15"), CancellationToken())
    assert yahoo.api.requests[-1].params["events"] == "div,splits"
    assert p.take_actions("NVDA", "1d") == [(SPLIT, "split", 10.0)]
    assert p.take_actions("NVDA", "1d") == []
    assert p.take_actions("NVDA", "1h") == []


# --- adjust= ------------------------------------------------------------------------------------


def test_adjust_none_is_refused_when_options_are_parsed(yahoo: Running, clock: Clock) -> None:
    with pytest.raises(ProviderUnavailableError, match=r"^provider yahoo: adjust=none is not available: "):
        provider(yahoo, clock, adjust="none")
    with pytest.raises(ProviderUnavailableError, match="adjust must be splits, all or none, not 'some'"):
        provider(yahoo, clock, adjust="some")
    assert provider(yahoo, clock).adjusted_for == {"split"}
    assert provider(yahoo, clock, adjust="all").adjusted_for == {"split", "dividend"}


def test_adjust_all_scales_each_bar_by_adjclose_over_close(yahoo: Running, clock: Clock,
                                                          market: YahooMarket) -> None:
    clock.now = AFTER
    window = (parse_ts("2024-02-05"), parse_ts("2024-02-24"))
    plain = provider(yahoo, clock).fetch("MSFT", "1d", *window, CancellationToken())
    adjusted = provider(yahoo, clock, adjust="all").fetch("MSFT", "1d", *window, CancellationToken())
    assert [b[0] for b in plain] == [b[0] for b in adjusted] and len(plain) == 15
    listing = market.listings["MSFT"]
    for p, a in zip(plain, adjusted, strict=True):
        day = date.fromtimestamp(p[0] + 12 * 3600)
        factor = market.dividend_factor(listing, day)
        assert factor < 1  # the June dividend, and February's before its date
        assert a[4] == round(p[4] * factor, 6)  # close is adjclose
        assert a[1] == pytest.approx(p[1] * a[4] / p[4]) and a[2] == pytest.approx(p[2] * a[4] / p[4])
        assert a[3] == pytest.approx(p[3] * a[4] / p[4]) and a[5] == p[5]
    with pytest.raises(ValueError, match="adjust=all needs adjclose, which Yahoo serves for 1d and 1w bars only"):
        provider(yahoo, clock, adjust="all").check_window("1h", int(AFTER) - 86400, int(AFTER), int(AFTER))


# --- restatement --------------------------------------------------------------------------------


def test_a_split_restates_the_stored_history_in_the_same_job(yahoo: Running, clock: Clock, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11's scenario: NVDA stored at ~1000; Yahoo then serves it split-adjusted (~100)."""
    store = CsvStore(tmp_path)
    first, _ = run(yahoo, clock, store, "NVDA", FIRST_END)
    before = closes(store, "NVDA")
    assert first == len(before)
    path = tmp_path / "yahoo/1d/NVDA.csv"
    old_text = path.read_text()
    clock.now = AFTER
    with caplog.at_level(logging.INFO, logger="ktrdr_collect.engine"):
        candles, requests = run(yahoo, clock, store, "NVDA", SECOND_END)
    after = store.read("yahoo", "1d", "NVDA")
    fresh = CsvStore(tmp_path / "fresh")
    run(yahoo, clock, fresh, "NVDA", SECOND_END)
    assert after == fresh.read("yahoo", "1d", "NVDA")  # one price scale: what a new download stores
    assert max(bar[4] for bar in after) * 5 < min(before)  # the old scale is gone
    assert f"NVDA: restated {len(before)} bars after a 10:1 split on 2024-06-10" in caplog.messages
    actions = tmp_path / "yahoo/1d/NVDA.actions.csv"
    assert actions.read_text() == "timestamp,type,value\n2024-06-10T00:00:00Z,split,10\n"
    assert stored_splits(path) == [(SPLIT, 10.0)]
    kept = list((tmp_path / "yahoo/1d/.ktrdr").glob("NVDA.before-restatement-*.csv"))
    assert len(kept) == 1 and kept[0].read_text() == old_text  # the previous version
    assert requests == 2  # the new days, then the stored span again (one request each)
    assert candles == len(after)  # every stored bar changed, plus the new ones
    assert store.coverage("yahoo", "1d", "NVDA") == [(START, SECOND_END)]
    # the next run knows the split: nothing restated, no request
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ktrdr_collect.engine"):
        assert run(yahoo, clock, store, "NVDA", SECOND_END) == (0, 0)
    assert not [m for m in caplog.messages if "restated" in m]


def test_a_restatement_that_fails_writes_nothing_new_and_the_next_run_finishes_it(
        yahoo: Running, clock: Clock, tmp_path: Path) -> None:
    """The second run fills a range before the stored bars (batched) and the new days (which bring
    the split); every request fetching the stored span again fails. Neither the batch (flushed on
    the way out) nor the new days are written on the new scale, the split is not stored, and the
    next run restates."""
    store = CsvStore(tmp_path)
    run(yahoo, clock, store, "NVDA", FIRST_END, start=parse_ts("2024-03-01"))
    path = tmp_path / "yahoo/1d/NVDA.csv"
    old_text = path.read_text()
    coverage = store.coverage("yahoo", "1d", "NVDA")

    def served(h: Handler) -> None:
        yahoo.api.route(h, yahoo.api.requests[-1])

    yahoo.queue(served, served, *[status(500, text="oops")] * (2 * FAST.attempts))
    clock.now = AFTER
    engine = ProcessingEngine(provider(yahoo, clock), store, workers=1, retry=FAST, now=clock)
    [result] = engine.process_batch(["NVDA"], "1d", START, SECOND_END)
    assert result.status == "failed" and "HTTP 500" in (result.error or "")
    assert path.read_text() == old_text and store.coverage("yahoo", "1d", "NVDA") == coverage
    assert not (tmp_path / "yahoo/1d/NVDA.actions.csv").exists()
    _, requests = run(yahoo, clock, store, "NVDA", SECOND_END)
    assert requests == 3  # before, after, and the stored span again
    fresh = CsvStore(tmp_path / "fresh")
    run(yahoo, clock, fresh, "NVDA", SECOND_END)
    assert store.read("yahoo", "1d", "NVDA") == fresh.read("yahoo", "1d", "NVDA")
    assert read_actions(tmp_path / "yahoo/1d/NVDA.actions.csv") == [(SPLIT, "split", 10.0)]


def test_a_backfill_after_an_unseen_split_is_repaired_by_the_run_that_sees_it(
        yahoo: Running, clock: Clock, tmp_path: Path) -> None:
    """The documented limit: Yahoo reports actions inside the window only. A backfill after the
    split stores the new scale before the old; the next run over the split restates it all."""
    from ktrdr_collect.storage.inventory import SeriesKey

    store = CsvStore(tmp_path)
    march = parse_ts("2024-03-01")
    run(yahoo, clock, store, "NVDA", FIRST_END, start=march)
    clock.now = AFTER
    run(yahoo, clock, store, "NVDA", march)
    key = SeriesKey("yahoo", "1d", "NVDA", "csv")
    assert [f.ts for f in scale_findings(key, store.read("yahoo", "1d", "NVDA"), [])] == [march]
    _, requests = run(yahoo, clock, store, "NVDA", SECOND_END)
    assert requests == 2
    fresh = CsvStore(tmp_path / "fresh")
    run(yahoo, clock, fresh, "NVDA", SECOND_END)
    assert store.read("yahoo", "1d", "NVDA") == fresh.read("yahoo", "1d", "NVDA")


def test_a_refresh_that_meets_a_split_restates_the_bars_before_its_window(
        yahoo: Running, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = CsvStore(tmp_path)
    run(yahoo, clock, store, "NVDA", FIRST_END)
    clock.now = AFTER
    engine = ProcessingEngine(provider(yahoo, clock), store, workers=1, retry=FAST, now=clock)
    with caplog.at_level(logging.INFO, logger="ktrdr_collect.engine"):
        [result] = engine.process_batch(["NVDA"], "1d", parse_ts("2024-06-03"), SECOND_END, refresh=True)
    assert result.status == "completed" and result.requests == 2  # the window, then what lies before it
    fresh = CsvStore(tmp_path / "fresh")
    run(yahoo, clock, fresh, "NVDA", SECOND_END)
    assert store.read("yahoo", "1d", "NVDA") == fresh.read("yahoo", "1d", "NVDA")
    assert "NVDA: restated 109 bars after a 10:1 split on 2024-06-10" in caplog.messages  # Jan 2 to May 31


def test_without_an_event_the_append_mixes_scales_and_verify_sees_it(yahoo: Running, clock: Clock,
                                                                      tmp_path: Path) -> None:
    """What restatement prevents: the same prices with no event leave the old scale stored."""
    from ktrdr_collect.storage.inventory import SeriesKey

    store = CsvStore(tmp_path)
    run(yahoo, clock, store, "QUIET", FIRST_END)
    clock.now = AFTER
    run(yahoo, clock, store, "QUIET", SECOND_END)
    bars = store.read("yahoo", "1d", "QUIET")
    assert max(b[4] for b in bars) > 5 * min(b[4] for b in bars)
    assert not (tmp_path / "yahoo/1d/QUIET.actions.csv").exists()
    findings = list(scale_findings(SeriesKey("yahoo", "1d", "QUIET", "csv"), bars, []))
    assert [f.ts for f in findings] == [SPLIT]


def test_a_first_download_across_a_split_restates_nothing(yahoo: Running, clock: Clock, tmp_path: Path) -> None:
    """Bars this job fetched itself are on today's scale: seeing the split in a later segment of
    the same job costs no request and rewrites nothing."""
    clock.now = AFTER
    store = CsvStore(tmp_path)
    p = provider(yahoo, clock)
    p.max_bars = 40  # several segments; the split is in a late one
    engine = ProcessingEngine(p, store, workers=1, retry=FAST, now=clock)
    [result] = engine.process_batch(["NVDA"], "1d", START, SECOND_END)
    assert result.status == "completed" and result.requests == result.segments_total > 3
    assert result.candles == len(store.read("yahoo", "1d", "NVDA"))
    assert read_actions(tmp_path / "yahoo/1d/NVDA.actions.csv") == [(SPLIT, "split", 10.0)]
    assert not list((tmp_path / "yahoo/1d/.ktrdr").glob("*before-restatement*"))


def test_a_backfill_that_finds_an_older_split_restates_nothing(yahoo: Running, clock: Clock,
                                                               tmp_path: Path) -> None:
    """Stored bars after the split are not changed by it: only bars before an action move."""
    clock.now = AFTER
    store = CsvStore(tmp_path)
    run(yahoo, clock, store, "NVDA", SECOND_END, start=parse_ts("2024-06-17"))
    stored = store.read("yahoo", "1d", "NVDA")
    _, requests = run(yahoo, clock, store, "NVDA", SECOND_END)
    assert requests == 1 and store.read("yahoo", "1d", "NVDA")[-len(stored):] == stored
    assert read_actions(tmp_path / "yahoo/1d/NVDA.actions.csv") == [(SPLIT, "split", 10.0)]


def test_dividends_are_stored_and_restate_only_with_adjust_all(yahoo: Running, clock: Clock,
                                                               tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    splits_only, everything = CsvStore(tmp_path / "a"), CsvStore(tmp_path / "b")
    for store, adjust in ((splits_only, "splits"), (everything, "all")):
        clock.now = BEFORE
        run(yahoo, clock, store, "MSFT", FIRST_END, adjust=adjust)
    stored = splits_only.read("yahoo", "1d", "MSFT")
    clock.now = AFTER
    with caplog.at_level(logging.INFO, logger="ktrdr_collect.engine"):
        _, requests = run(yahoo, clock, splits_only, "MSFT", SECOND_END)
    assert requests == 1 and splits_only.read("yahoo", "1d", "MSFT")[:len(stored)] == stored
    feb, june = (parse_ts("2024-02-14"), "dividend", 0.75), (parse_ts("2024-06-12"), "dividend", 0.75)
    assert read_actions(tmp_path / "a/yahoo/1d/MSFT.actions.csv") == [feb, june]  # the first job saw February's
    assert not [m for m in caplog.messages if "restated" in m]
    with caplog.at_level(logging.INFO, logger="ktrdr_collect.engine"):
        _, requests = run(yahoo, clock, everything, "MSFT", SECOND_END, adjust="all")
    assert requests == 2
    fresh = CsvStore(tmp_path / "c")
    run(yahoo, clock, fresh, "MSFT", SECOND_END, adjust="all")
    assert everything.read("yahoo", "1d", "MSFT") == fresh.read("yahoo", "1d", "MSFT")
    n = len(stored)
    assert f"MSFT: restated {n} bars after a 0.75 dividend on 2024-06-12" in caplog.messages


def test_parquet_series_keep_their_actions_in_the_same_csv_beside_the_folder(yahoo: Running, clock: Clock,
                                                                             tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from ktrdr_collect.storage.parquet_store import ParquetStore

    store = ParquetStore(tmp_path)
    run(yahoo, clock, store, "NVDA", FIRST_END)
    clock.now = AFTER
    run(yahoo, clock, store, "NVDA", SECOND_END)
    fresh = CsvStore(tmp_path / "fresh")
    run(yahoo, clock, fresh, "NVDA", SECOND_END)
    assert store.read("yahoo", "1d", "NVDA") == fresh.read("yahoo", "1d", "NVDA")
    assert read_actions(tmp_path / "yahoo/1d/NVDA.actions.csv") == [(SPLIT, "split", 10.0)]
    assert len(list((tmp_path / "yahoo/1d/.ktrdr").glob("NVDA.parquet.before-restatement-*.csv"))) == 1
