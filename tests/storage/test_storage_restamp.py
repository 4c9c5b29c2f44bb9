"""Converting old daily stamps: whole-series replace and set-aside in both formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.open import open_store
from ktrdr_collect.storage.restamp import carried_ranges, restamp_bars, restamp_series
from ktrdr_collect.storage.timeframes import DAY, parse_ts

NY_OPEN = 14 * 3600 + 30 * 60
OLD = [(parse_ts(f"2024-01-0{d}") + NY_OPEN, float(d), d + 1.0, d - 1.0, float(d), 10.0 * d) for d in (2, 3, 4, 5)]


def next_day(ts: int) -> int:
    return ts // DAY + 1  # like an Asian exchange: the New York date is one day early


@pytest.fixture(params=["csv", "parquet"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CsvStore:
    return open_store(request.param, tmp_path)


def test_a_series_is_moved_to_its_session_dates_with_its_fetched_ranges(store: CsvStore) -> None:
    store.write("yahoo", "1d", "WSKT.JK", OLD, (OLD[0][0] - 3600, OLD[-1][0] + 3600))
    said = restamp_series(store, "yahoo", "1d", "WSKT.JK", next_day)
    assert said.startswith("converted 4 stored 1d bars")
    assert [b[0] for b in store.read("yahoo", "1d", "WSKT.JK")] == [parse_ts(f"2024-01-0{d}") for d in (3, 4, 5, 6)]
    assert [b[1:] for b in store.read("yahoo", "1d", "WSKT.JK")] == [b[1:] for b in OLD]
    assert store.coverage("yahoo", "1d", "WSKT.JK") == [(parse_ts("2024-01-03"), parse_ts("2024-01-07"))]
    assert restamp_series(store, "yahoo", "1d", "WSKT.JK", next_day).startswith("already")


def test_a_series_whose_days_cannot_be_told_is_set_aside_and_forgotten(store: CsvStore) -> None:
    store.write("yahoo", "1d", "XYZ", OLD, (OLD[0][0], OLD[-1][0] + 1))
    said = restamp_series(store, "yahoo", "1d", "XYZ", lambda ts: None)
    assert "fetched again" in said
    assert store.read("yahoo", "1d", "XYZ") == [] and store.coverage("yahoo", "1d", "XYZ") == []
    kept = store.path("yahoo", "1d", "XYZ").with_name(store.path("yahoo", "1d", "XYZ").name + ".legacy")
    assert kept.exists()
    store.write("yahoo", "1d", "XYZ", OLD[:1], (OLD[0][0], OLD[0][0] + 1))
    restamp_series(store, "yahoo", "1d", "XYZ", lambda ts: None)
    assert kept.exists() and kept.with_name(kept.name + ".1").exists()  # the first copy is never overwritten


def test_two_bars_on_one_day_are_never_merged() -> None:
    assert restamp_bars(OLD[:2], lambda ts: 7) is None
    assert restamp_bars(OLD[:2], next_day) is not None


def test_ranges_without_bars_are_dropped_and_the_rest_shrink_to_their_bars() -> None:
    new = restamp_bars(OLD, next_day)
    assert new is not None
    ranges = [(0, 1000), (OLD[1][0] - 10, OLD[2][0] + 10)]
    assert carried_ranges(OLD, new, ranges, DAY) == [(new[1][0], new[2][0] + DAY)]
