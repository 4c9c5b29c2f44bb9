"""storage.inventory: what is stored, from listings, records and heads/tails, agrees with a full read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ktrdr_collect.storage import csv_store, inventory, series
from ktrdr_collect.storage.calendar import DEMO_CALENDAR
from ktrdr_collect.storage.inventory import SeriesKey
from ktrdr_collect.storage.open import open_store
from ktrdr_collect.storage.store import Store
from ktrdr_collect.storage.timeframes import DAY, parse_ts

FORMATS = ["csv", pytest.param("parquet", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("pyarrow") is None, reason="needs pyarrow"))]
MON = parse_ts("2024-01-01T00:00:00Z")


def demo_bars(start: int, end: int, timeframe: str = "1d") -> list[tuple[int, float, float, float, float, float]]:
    return [(ts, 10.0, 11.0, 9.0, 10.5, 100.0) for ts in DEMO_CALENDAR.bar_times(timeframe, start, end)]


def full_read_view(store: Store, key: SeriesKey) -> tuple[int | None, int | None, int, list[tuple[int, int]], int]:
    """first, last, rows, ranges, holes as a full read sees them."""
    bars = store.read(key.provider, key.timeframe, key.symbol)
    ranges = store.coverage(key.provider, key.timeframe, key.symbol)
    have = {b[0] for b in bars}
    holes = sum(1 for lo, hi in ranges for ts in DEMO_CALENDAR.bar_times(key.timeframe, lo, hi) if ts not in have)
    return (bars[0][0] if bars else None, bars[-1][0] if bars else None, len(bars), ranges, holes)


@pytest.mark.parametrize("fmt", FORMATS)
def test_listing_agrees_with_a_full_read(tmp_path: Path, fmt: str) -> None:
    store = open_store(fmt, tmp_path)
    bars = demo_bars(MON, MON + 70 * DAY)
    store.write("demo", "1d", "AAPL", bars[:10] + bars[13:30], (MON, bars[30][0]))  # 3 bars missing inside
    store.write("demo", "1d", "AAPL", bars[40:], (bars[40][0], MON + 70 * DAY))  # a second range
    store.write("demo", "1d", "BTC/USDT", bars[:5], (MON, bars[5][0]))
    store.write("demo", "1d", "EMPTY", [], (MON, MON + 2 * DAY))  # fetched, no bars (a weekend)
    hourly = demo_bars(MON, MON + 3 * DAY, "1h")
    store.write("demo", "1h", "AAPL", hourly, (MON, MON + 3 * DAY))
    keys = inventory.find_series(tmp_path)
    assert [(k.timeframe, k.symbol) for k in keys] == [("1h", "AAPL"), ("1d", "AAPL"), ("1d", "BTC/USDT"),
                                                        ("1d", "EMPTY")]
    assert {k.format for k in keys} == {fmt}
    infos = list(inventory.list_series(tmp_path, keys, lambda provider, symbol: DEMO_CALENDAR))
    for info in infos:
        assert (info.first, info.last, info.rows, info.ranges, info.holes) == full_read_view(store, info.key)
        assert info.path == str(store.path(info.key.provider, info.key.timeframe, info.key.symbol))
    aapl = infos[1]
    assert aapl.holes == 3 and len(aapl.ranges) == 2 and aapl.size > 0
    assert infos[3].rows == 0 and infos[3].ranges == [(MON, MON + 2 * DAY)]


def test_filters_and_what_is_not_a_series(tmp_path: Path) -> None:
    store = open_store("csv", tmp_path)
    bars = demo_bars(MON, MON + 10 * DAY)
    for symbol in ("AAPL", "MSFT", "BRK.B"):
        store.write("demo", "1d", symbol, bars, (MON, MON + 10 * DAY))
    store.write("yahoo", "1w", "AAPL", [], (MON, MON + DAY))
    folder = tmp_path / "demo" / "1d"
    (folder / "AAPL.actions.csv").write_text("timestamp,type,value\n")  # beside the data, not a series
    (folder / "MSFT.csv.legacy").write_text("x")  # set aside
    (folder / ".AAPL.csv.0123.tmp").write_text("x")  # a killed write's temp file
    (folder / "notes.txt").write_text("x")
    (tmp_path / "demo" / "2h").mkdir()  # not a timeframe
    (folder / ".ktrdr" / "GONE.coverage.json").write_text(json.dumps({"version": 1, "ranges": []}))
    names = [(k.provider, k.timeframe, k.symbol) for k in inventory.find_series(tmp_path)]
    assert names == [("demo", "1d", "AAPL"), ("demo", "1d", "BRK.B"), ("demo", "1d", "MSFT"),
                     ("yahoo", "1w", "AAPL")]
    assert [k.symbol for k in inventory.find_series(tmp_path, ["MSFT", "brk.b"])] == ["BRK.B", "MSFT"]
    assert [k.provider for k in inventory.find_series(tmp_path, provider="yahoo")] == ["yahoo"]
    assert len(inventory.find_series(tmp_path, timeframe="1d")) == 3
    assert inventory.find_series(tmp_path, fmt="parquet") == []
    assert inventory.find_series(tmp_path / "nowhere") == []


def test_csv_rows_are_counted_without_parsing(tmp_path: Path) -> None:
    path = tmp_path / "X.csv"
    path.write_bytes(csv_store.HEADER.encode() + b"2024-01-02T00:00:00Z,1,1,1,1,1\n"
                     b"2024-01-03T00:00:00Z,1,1,1,1,1\n2024-01-04T00:0")  # a torn last line
    assert csv_store.summarize(path) == (parse_ts("2024-01-02T00:00:00Z"), parse_ts("2024-01-03T00:00:00Z"), 2,
                                         os.path.getsize(path))
    assert csv_store.summarize(tmp_path / "missing.csv") == (None, None, 0, 0)
    path.write_bytes(csv_store.HEADER.encode())
    assert csv_store.summarize(path)[:3] == (None, None, 0)


def test_rows_of_a_file_larger_than_one_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_store, "_COUNT_CHUNK", 64)  # many chunks; lines cross their edges
    store = open_store("csv", tmp_path)
    bars = demo_bars(MON, MON + 400 * DAY)
    store.write("demo", "1d", "AAPL", bars, (MON, MON + 400 * DAY))
    first, last, rows, _ = csv_store.summarize(store.path("demo", "1d", "AAPL"))
    assert (first, last, rows) == (bars[0][0], bars[-1][0], len(bars))


def test_holes_are_unknown_without_a_calendar(tmp_path: Path) -> None:
    store = open_store("csv", tmp_path)
    store.write("demo", "1d", "AAPL", demo_bars(MON, MON + 5 * DAY), (MON, MON + 5 * DAY))
    (info,) = inventory.list_series(tmp_path, inventory.find_series(tmp_path), lambda p, s: None)
    assert info.holes is None and info.rows == 5


def test_the_listing_cache_is_used_only_while_the_files_are_unchanged(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store("csv", tmp_path)
    bars = demo_bars(MON, MON + 30 * DAY)
    store.write("demo", "1d", "AAPL", bars[:10], (MON, bars[10][0]))
    store.write("demo", "1d", "MSFT", bars, (MON, MON + 30 * DAY))
    cal = lambda provider, symbol: DEMO_CALENDAR  # noqa: E731

    def listing() -> list[tuple[object, ...]]:
        keys = inventory.find_series(tmp_path)
        return [(i.key.symbol, i.first, i.last, i.rows, i.size, i.ranges, i.holes)
                for i in inventory.list_series(tmp_path, keys, cal)]

    first = listing()
    cache = tmp_path / "demo" / "1d" / ".ktrdr" / inventory.INDEX_FILE
    assert not cache.exists()  # the records say it all: nothing to cache
    for symbol in ("AAPL", "MSFT"):  # records as older versions wrote them: rows unknown
        record = store.coverage_path("demo", "1d", symbol)
        record.write_text(json.dumps({"version": 1, "ranges": json.loads(record.read_text())["ranges"]}))
    assert listing() == first
    assert cache.exists()
    reads: list[object] = []
    real = inventory.summarize
    monkeypatch.setattr(inventory, "summarize", lambda *a: reads.append(a[1].symbol) or real(*a))
    assert listing() == first and reads == []  # nothing changed: no file read
    store.write("demo", "1d", "AAPL", bars[10:20], (bars[10][0], bars[20][0]))  # an append
    second = listing()
    assert reads == ["AAPL"] and second[0][3] == 20 and second[1] == first[1]
    store.erase("demo", "1d", "MSFT", bars[3][0], bars[5][0])  # a rewrite and a new record
    assert listing()[1][3] == len(bars) - 2 and reads == ["AAPL", "MSFT"]
    assert listing() == inventory_without_cache(tmp_path, cal)
    cache.write_text("{not json")  # a damaged cache is just not used
    assert listing() == inventory_without_cache(tmp_path, cal)


def inventory_without_cache(root: Path, cal: inventory.CalendarFor) -> list[tuple[object, ...]]:
    keys = inventory.find_series(root)
    return [(i.key.symbol, i.first, i.last, i.rows, i.size, i.ranges, i.holes)
            for i in inventory.list_series(root, keys, cal, use_index=False)]


def test_a_cache_that_cannot_be_written_costs_nothing_but_time(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store("csv", tmp_path)
    store.write("demo", "1d", "AAPL", demo_bars(MON, MON + 5 * DAY), (MON, MON + 5 * DAY))

    def read_only(*_: object, **__: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(inventory.files, "atomic_write", read_only)  # a read-only data dir
    (info,) = inventory.list_series(tmp_path, inventory.find_series(tmp_path))
    assert info.rows == 5 and not (tmp_path / "demo" / "1d" / ".ktrdr" / inventory.INDEX_FILE).exists()


def test_the_record_keeps_the_rows_of_its_file_through_every_kind_of_write(tmp_path: Path) -> None:
    store = open_store("csv", tmp_path)
    key = ("demo", "1d", "AAPL")
    bars = demo_bars(MON, MON + 60 * DAY)
    path, record = store.path(*key), store.coverage_path(*key)

    def stats() -> object:
        return series.read_record(record)[1]

    store.write(*key, bars[10:20], (bars[10][0], bars[20][0]))  # a new file
    store.write(*key, bars[20:30], (bars[20][0], bars[30][0]))  # an append
    store.write(*key, bars[:12], (MON, bars[12][0]))  # a backfill: merged, rewritten
    store.write(*key, [], (bars[30][0], bars[31][0]))  # a range without bars
    got = stats()
    assert got == series.FileStats.of(30, path.stat(), bars[0][0], bars[29][0])
    assert csv_store.count_rows(path) == 30
    store.erase(*key, bars[3][0], bars[5][0])
    assert stats() is None  # rewritten after the record: unknown, so a listing counts
    assert csv_store.summarize(path, stats())[2] == 28
    store.write(*key, bars[40:42], (bars[40][0], bars[42][0]))  # an append to a file of unknown rows
    assert stats() is None and csv_store.summarize(path)[2] == 30


def test_a_listing_trusts_the_record_only_while_it_describes_the_file(tmp_path: Path) -> None:
    store = open_store("csv", tmp_path)
    key = ("demo", "1d", "AAPL")
    bars = demo_bars(MON, MON + 30 * DAY)
    store.write(*key, bars[:10], (MON, bars[10][0]))
    path = store.path(*key)
    known = series.read_record(store.coverage_path(*key))[1]
    assert known is not None and known.rows == 10
    assert csv_store.summarize(path, known._replace(rows=999))[2] == 999  # used, not counted
    # a crash after the bars were appended and before the record was saved: the record is stale
    csv_store.store_bars(path, bars[10:15], tmp_path)
    assert csv_store.summarize(path, known) == (bars[0][0], bars[14][0], 15, path.stat().st_size)
    (info,) = inventory.list_series(tmp_path, inventory.find_series(tmp_path), use_index=False)
    assert info.rows == 15 and info.last == bars[14][0]


@pytest.mark.parametrize("file", [
    {"rows": 2, "size": 9, "mtime_ns": 1, "inode": 1, "first": 5},  # no last
    {"rows": 0, "size": 9, "mtime_ns": 1, "inode": 1, "first": 5, "last": 6},  # bars but no rows
    {"rows": 2, "size": -9, "mtime_ns": 1, "inode": 1, "first": 5, "last": 6},
    {"rows": True, "size": 9, "mtime_ns": 1, "inode": 1, "first": 5, "last": 6},
    {"rows": 2, "size": 9, "mtime_ns": 1, "inode": 1, "first": "5", "last": 6},
    [1, 2, 3],
])
def test_file_stats_that_do_not_add_up_are_ignored(tmp_path: Path, file: object) -> None:
    record = tmp_path / "X.coverage.json"
    record.write_text(json.dumps({"version": 1, "ranges": [[0, 10]], "file": file}))
    assert series.read_record(record) == ([(0, 10)], None)  # the ranges still count
