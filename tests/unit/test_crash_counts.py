"""A job's candle counts equal what its data files hold, whatever moment a crash hit: the journal
line goes out just before each write, and a resumed job counts rows, not fetched bars."""

from __future__ import annotations

from pathlib import Path

from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.engine.pipeline import RetryPolicy
from ktrdr_collect.jobs.journal import StoredJournal
from ktrdr_collect.providers.demo import DemoProvider
from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.open import open_store
from ktrdr_collect.storage.timeframes import parse_ts

FAST = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002)
START, MIDDLE, END = parse_ts("2024-01-01"), parse_ts("2024-02-01"), parse_ts("2024-03-01")


def run(store: CsvStore, journal: StoredJournal, start: int, end: int) -> int:
    provider = DemoProvider({"latency_ms": 0, "max_bars": 5})
    engine = ProcessingEngine(provider, store, workers=1, retry=FAST)
    [result] = engine.process_batch(["AAPL"], "1d", start, end, on_stored=journal.record)
    return result.candles


def rows(store: CsvStore) -> int:
    return len(store.read("demo", "1d", "AAPL"))


def count(store: CsvStore):  # type: ignore[no-untyped-def]
    return lambda symbol, ranges: store.count("demo", "1d", symbol, ranges)


def test_a_crash_between_a_write_and_its_record_neither_loses_nor_doubles_a_bar(tmp_path: Path) -> None:
    for fmt in ("csv", "parquet"):
        store = open_store(fmt, tmp_path / fmt)
        journal = StoredJournal(tmp_path)
        (tmp_path / "stored").unlink(missing_ok=True)
        first = run(store, journal, START, MIDDLE)
        assert first == rows(store) > 0
        # the crash: bars on disk and journaled, their ranges never recorded as fetched
        store._save_coverage("demo", "1d", "AAPL", [])
        # and a journal line for a write that never happened
        journal.record("AAPL", (MIDDLE, END), 21)
        base = journal.candles(count(store))["AAPL"]
        assert base == first  # what the file holds, not what the journal claimed
        resumed = run(store, journal, START, END)  # refetches the first month: adds no row
        assert base + resumed == rows(store), fmt
        journal.close()


def test_a_bar_stored_again_as_it_was_counts_nothing_and_a_changed_one_counts(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    bars = [(START + i * 86400, 1.0, 2.0, 0.5, 1.5, 10.0) for i in range(3)]
    assert store.write("demo", "1d", "AAPL", bars, (START, START + 3 * 86400)) == 3
    assert store.write("demo", "1d", "AAPL", bars, (START, START + 3 * 86400)) == 0
    changed = [bars[0], (bars[1][0], 9.0, 9.0, 9.0, 9.0, 9.0)]
    assert store.write("demo", "1d", "AAPL", changed, (START, START + 2 * 86400)) == 1
    assert store.count("demo", "1d", "AAPL", [(START, START + 86400), (START + 2 * 86400, END)]) == 2
