"""Parquet stays O(change) as a series grows (issue 12 item 6): compaction rewrites each bar a
bounded number of times, never rewrites full parts, streams Arrow columns (no Python tuple per
bar), and the columnar paths keep the stored bars and schema exactly as before."""

from __future__ import annotations

import calendar
import os
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from ktrdr_collect.storage import parquet_store  # noqa: E402
from ktrdr_collect.storage.parquet_store import (  # noqa: E402
    SCHEMA,
    ParquetStore,
    choose_run,
    name_ts,
    part_name,
)
from ktrdr_collect.storage.series import Bar  # noqa: E402

T0 = 1704205800  # 2024-01-02T14:30:00Z
KEY = ("demo", "1m", "BTC/USDT")


def make_bars(start: int, n: int, add: float = 0.0) -> list[Bar]:
    return [(start + 60 * i, 100.0 + i + add, 100.5 + i + add, 99.75 + i + add, 100.125 + i + add, 1000.0 + i)
            for i in range(n)]


def write(store: ParquetStore, bars: list[Bar]) -> int:
    return store.write(*KEY, bars, (bars[0][0], bars[-1][0] + 60))


def parts(store: ParquetStore) -> list[Path]:
    return sorted(p for p in store.path(*KEY).iterdir() if p.name.startswith("part-"))


def rows_of(path: Path) -> int:
    return pq.read_metadata(path).num_rows


class RowsWritten:
    """Counts the rows pyarrow encodes into Parquet files (every part write goes through
    ParquetWriter.write_table, whichever code path calls it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows = 0
        original = pq.ParquetWriter.write_table

        def counting(writer, table, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            self.rows += table.num_rows
            return original(writer, table, *args, **kwargs)

        monkeypatch.setattr(pq.ParquetWriter, "write_table", counting)


# --- the compaction policy ----------------------------------------------------------------------


def test_appending_rewrites_each_bar_a_bounded_number_of_times(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: the run of max_parts//2+1 parts with the fewest rows was merged, so once a middling
    # part existed every later merge took it along with the new small parts: it grew by a few
    # segments at a time and was rewritten again and again (O(n^2) rows for n segments).
    store = ParquetStore(tmp_path, max_parts=8)
    counter = RowsWritten(monkeypatch)
    segments, size = 240, 10
    bars = make_bars(T0, segments * size)
    for k in range(segments):
        write(store, bars[k * size : (k + 1) * size])
        assert len(parts(store)) <= 8
    assert store.read(*KEY) == bars
    amplification = counter.rows / len(bars)
    assert amplification <= 5.0, f"each bar was written {amplification:.1f} times on average"


def test_backfilling_backwards_is_bounded_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ParquetStore(tmp_path, max_parts=8)
    counter = RowsWritten(monkeypatch)
    segments, size = 240, 10
    bars = make_bars(T0, segments * size)
    for k in reversed(range(segments)):
        write(store, bars[k * size : (k + 1) * size])
    assert store.read(*KEY) == bars
    assert counter.rows / len(bars) <= 5.0


def test_full_parts_are_never_rewritten_by_compaction(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path, max_parts=4, full_rows=100)
    bars = make_bars(T0, 2000)
    seen_full: dict[str, tuple[int, int]] = {}
    for k in range(200):
        write(store, bars[k * 10 : (k + 1) * 10])
        now = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts(store)}
        for name, ident in seen_full.items():
            assert now.get(name) == ident, f"full part {name} was rewritten"
        seen_full.update({p.name: now[p.name] for p in parts(store) if rows_of(p) >= 100})
        assert sum(1 for p in parts(store) if rows_of(p) < 100) <= 4
    assert len(seen_full) >= 5
    assert store.read(*KEY) == bars


def test_choose_run_prefers_balanced_runs_of_small_parts() -> None:
    # 33 equal parts, 32 allowed: 17 of them are merged (the widest run, fewest rows per part removed)
    assert choose_run([1000] * 33, 32, 1 << 18) == (0, 17)
    # a middling part beside many small ones: the small ones are merged, not the middling one again
    rows = [300_000, *[17_000] * 15, *[1000] * 17]
    i, j = choose_run(rows, 32, 1 << 20)  # type: ignore[misc]
    assert rows[i:j] == [1000] * 17
    # nothing to do within the bound; full parts do not count and are never chosen
    assert choose_run([1000] * 32, 32, 1 << 18) is None
    rows = [1 << 18] * 40 + [10, 10, 10]
    assert choose_run(rows, 2, 1 << 18) == (40, 42)
    assert choose_run([1 << 18, 10, 1 << 18, 10, 1 << 18, 10], 2, 1 << 18) is None  # no two adjacent


# --- O(change): memory -------------------------------------------------------------------------


def test_compaction_moves_columns_not_python_tuples(tmp_path: Path) -> None:
    # Before: every merged row became a Python tuple (~150 bytes each, ~30 MB here).
    store = ParquetStore(tmp_path, max_parts=4)
    n = 40_000
    bars = make_bars(T0, 4 * n + 10)
    for k in range(4):
        write(store, bars[k * n : (k + 1) * n])
    tracemalloc.start()
    try:
        write(store, bars[4 * n :])  # a fifth part: three of the others are merged (120k rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(parts(store)) <= 4 and max(rows_of(p) for p in parts(store)) >= 3 * n
    assert peak < 4_000_000, f"Python objects peaked at {peak / 1e6:.1f} MB during the write"
    assert store.read(*KEY) == bars


def test_coverage_and_last_bar_read_no_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ParquetStore(tmp_path, max_parts=4)
    bars = make_bars(T0, 100)
    for k in range(10):
        write(store, bars[k * 10 : (k + 1) * 10])

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a part was opened")

    monkeypatch.setattr(pq, "ParquetFile", no_reading)
    monkeypatch.setattr(pq, "read_table", no_reading)
    fresh = ParquetStore(tmp_path)
    assert fresh.coverage(*KEY) == [(T0, T0 + 6000)]
    assert fresh.first_ts(*KEY) == T0 and fresh.last_ts(*KEY) == bars[-1][0]


# --- the columnar paths keep the data and the format ---------------------------------------------


def test_overlapping_write_counts_changed_rows_and_new_values_win(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    assert write(store, make_bars(T0, 10)) == 10
    again = make_bars(T0, 15)[5:]  # 5 stored exactly so, 5 new
    again[1] = (again[1][0], 1.0, 2.0, 0.5, 1.5, 3.0)  # one stored bar changed
    assert write(store, again) == 6
    assert store.read(*KEY) == make_bars(T0, 5) + again
    assert write(store, again) == 0


def test_columns_and_tuples_store_the_same_bars(tmp_path: Path) -> None:
    columns = pytest.importorskip("ktrdr_collect.storage.columns")
    bars = make_bars(T0, 50)
    a, b = ParquetStore(tmp_path / "a"), ParquetStore(tmp_path / "b")
    write(a, bars[:30])
    a.write(*KEY, columns.Columns.from_bars(bars[20:]), (bars[20][0], bars[-1][0] + 60))
    write(b, bars)
    assert a.read(*KEY) == b.read(*KEY) == bars


def test_parts_keep_the_schema_small_ones_plain_the_rest_zstd(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path, max_parts=2)
    big = make_bars(T0, 20_000)
    write(store, big[:10])
    small_part = parts(store)[0]
    assert pq.read_schema(small_part).remove_metadata() == SCHEMA
    assert pq.ParquetFile(small_part).metadata.row_group(0).column(3).compression == "UNCOMPRESSED"
    write(store, big[10:20])
    write(store, big[20:])  # a third part: the first two are merged
    for path in parts(store):
        assert pq.read_schema(path).remove_metadata() == SCHEMA
        labels = pq.read_table(path, columns=["provider", "timeframe", "symbol"]).to_pydict()
        assert set(labels["symbol"]) == {"BTC/USDT"} and set(labels["provider"]) == {"demo"}
    biggest = max(parts(store), key=rows_of)
    meta = pq.ParquetFile(biggest).metadata
    assert meta.row_group(0).column(3).compression == "ZSTD"  # timestamp
    assert meta.row_group(0).column(4).compression == "ZSTD"  # open
    assert store.read(*KEY) == big


def test_hand_placed_overlapping_parts_are_sorted_when_compacted(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path, max_parts=2)
    folder = store.path(*KEY)
    folder.mkdir(parents=True)
    first, second = make_bars(T0, 10), make_bars(T0 + 5 * 60, 10, add=500.0)  # overlap by 5 bars
    label = ("demo", "1m", "BTC/USDT")
    (folder / part_name(first[0][0], first[-1][0])).write_bytes(parquet_store.part_bytes(first, label))
    (folder / part_name(second[0][0], second[-1][0])).write_bytes(parquet_store.part_bytes(second, label))
    expected = first[:5] + second
    assert store.read(*KEY) == expected
    later = make_bars(T0 + 3600, 3)
    write(store, later)  # a third part: two are merged; out of order, so sorted (the later part wins)
    assert len(parts(store)) == 2
    assert store.read(*KEY) == expected + later
    for path in parts(store):
        stamps = pq.read_table(path, columns=["timestamp"]).column("timestamp").to_pylist()
        assert stamps == sorted(set(stamps))


def test_legacy_parts_are_compacted_into_labelled_ones(tmp_path: Path) -> None:
    folder = tmp_path / "demo" / "1m" / "BTC_USDT.parquet"
    folder.mkdir(parents=True)
    old = make_bars(T0, 5)
    stamps = pa.array([b[0] * 1000 for b in old], pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    table = pa.table([stamps, *[pa.array([b[i] for b in old], pa.float64()) for i in range(1, 6)]],
                     names=["timestamp", "open", "high", "low", "close", "volume"])
    pq.write_table(table, folder / part_name(old[0][0], old[-1][0]))
    store = ParquetStore(tmp_path, max_parts=2)
    new = make_bars(T0 + 3600, 5)
    write(store, new)
    newer = make_bars(T0 + 7200, 5)
    write(store, newer)  # three parts, two allowed: the legacy one and the next are concatenated
    assert len(parts(store)) == 2
    for path in parts(store):
        assert pq.read_schema(path).remove_metadata() == SCHEMA
    assert store.read(*KEY) == old + new + newer


@pytest.mark.parametrize("ts", [0, 1, T0, 951782400, 4102444799, -86400, 253402300799])
def test_part_times_parse_as_before(ts: int) -> None:
    text = parquet_store.ts_name(ts)
    assert name_ts(text) == ts
    assert name_ts(text) == calendar.timegm(datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timetuple())


@pytest.mark.parametrize("text", ["20240102T143000", "20240102 143000Z", "2024010ZT143000Z", "20241302T143000Z",
                                  "20240230T000000Z", "２0240102T143000Z", "20240102T146000Z", ""])
def test_part_times_refuse_what_is_not_one(text: str) -> None:
    with pytest.raises(ValueError):
        name_ts(text)
    assert parquet_store.parse_part_name(f"part-{text}-20240102T143000Z.parquet") is None


def test_a_missing_part_listing_is_no_part(tmp_path: Path) -> None:
    assert parquet_store.list_parts(tmp_path / "nothing") == []
    assert os.listdir(tmp_path) == []


def test_count_reads_only_the_parts_a_range_cuts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: count read every bar of the ranges as a tuple (a job's resume counts its whole window).
    store = ParquetStore(tmp_path)
    bars = make_bars(T0, 100)
    for k in range(5):
        write(store, bars[k * 20 : (k + 1) * 20])
    stamps = [b[0] for b in bars]
    cases = [[(T0, T0 + 100 * 60)], [(T0 + 5 * 60, T0 + 45 * 60)], [(T0 - 600, T0 + 60), (T0 + 50 * 60, T0 + 61 * 60)],
             [(T0 + 99 * 60, T0 + 10**6)], [(T0 - 10**6, T0 - 1)], []]
    for ranges in cases:
        want = sum(1 for ts in stamps if any(lo <= ts < hi for lo, hi in ranges))
        assert store.count(*KEY, ranges) == want, ranges
    opened: list[object] = []

    def counting(real):  # noqa: ANN001, ANN202
        def call(*args: object, **kwargs: object) -> object:
            opened.append(args[0])
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(pq, "ParquetFile", counting(pq.ParquetFile))
    monkeypatch.setattr(pq, "read_table", counting(pq.read_table))
    assert store.count(*KEY, [(T0, T0 + 100 * 60)]) == 100 and opened == []  # every part wholly inside
    assert store.count(*KEY, [(T0 + 30 * 60, T0 + 70 * 60)]) == 40 and len(opened) == 2  # two parts cut


def test_count_with_hand_placed_overlapping_parts_counts_each_time_once(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    folder = store.path(*KEY)
    folder.mkdir(parents=True)
    first, second = make_bars(T0, 10), make_bars(T0 + 5 * 60, 10, add=500.0)
    label = ("demo", "1m", "BTC/USDT")
    (folder / part_name(first[0][0], first[-1][0])).write_bytes(parquet_store.part_bytes(first, label))
    (folder / part_name(second[0][0], second[-1][0])).write_bytes(parquet_store.part_bytes(second, label))
    assert store.count(*KEY, [(T0, T0 + 3600)]) == 15 == len(store.read(*KEY))
