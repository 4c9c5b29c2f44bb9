"""The columnar CSV path writes exactly what the row-by-row one did (issue 12: byte-identical files)."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import pytest

from ktrdr_collect import files
from ktrdr_collect.storage import csv_store
from ktrdr_collect.storage.columns import Columns
from ktrdr_collect.storage.csv_store import HEADER, csv_text, format_row


def _value(rng: random.Random) -> float:
    r = rng.random()
    if r < 0.3:
        return round(rng.random() * 10 ** rng.randint(0, 7), rng.randint(0, 8))
    if r < 0.5:
        return rng.choice([0.0, -0.0, 1.0, 100, 5e-05, 2.1e-07, 1e16, 1e21, 1.2345678901234568e17, 0.1, 1e-4,
                           9.99e-5, -3.5, 7, 1e-6, 1.5e-6])
    if r < 0.7:
        return rng.random() * 10 ** rng.randint(-9, -3)
    bits = struct.unpack("d", struct.pack("Q", rng.getrandbits(62)))[0]
    return abs(bits) if abs(bits) < 1e300 else 1.0


@pytest.mark.parametrize("seed", range(20))
def test_csv_text_is_format_row_byte_for_byte(seed: int) -> None:
    rng = random.Random(seed)
    bars = [(rng.randint(-10**9, 4 * 10**9), *(_value(rng) for _ in range(5))) for _ in range(rng.randint(1, 400))]
    expected = "".join(map(format_row, bars)).encode()
    assert csv_text(bars) == expected
    assert csv_text(Columns.from_bars(bars)) == expected


_FAMILIES = {
    "cents": lambda rng: round(rng.uniform(0, 10 ** rng.randint(1, 7)), 2),
    "signed cents": lambda rng: round(rng.uniform(-1e6, 1e6), 2),
    "up to 8 decimals": lambda rng: round(rng.random() * 10 ** rng.randint(0, 7), rng.randint(0, 8)),
    "tiny prices": lambda rng: round(rng.random() * 10 ** -rng.randint(1, 6), rng.randint(6, 12)) * rng.choice([1, -1]),
    "integers to 2**50": lambda rng: float(rng.randint(0, 2 ** rng.randint(1, 50))),
    "decimal fractions": lambda rng: rng.randint(0, 10 ** rng.randint(1, 15)) / 10 ** rng.randint(0, 12),
    "corners": lambda rng: rng.choice([0.0, -0.0, 1.0, -1.0, 0.5, 1e-12, 1.5e-11, 0.0001, 1e-5, 0.00012345, 99.99]),
    "mixed magnitudes": lambda rng: rng.choice([9999.9999, 10000.0, 99999999.99, 1234.567891, 0.01]),
    "full doubles": lambda rng: rng.random() * 10 ** rng.randint(-9, 3),
}


@pytest.mark.parametrize("family", _FAMILIES)
def test_csv_lines_are_format_row_byte_for_byte(family: str) -> None:
    """The array-only writer (storage/csv_lines.py): where it writes, it writes format_row's bytes;
    where it declines (None: a value beyond its exact range), csv_text's other path writes them."""
    from ktrdr_collect.storage.csv_lines import csv_lines

    rng = random.Random(family)
    value = _FAMILIES[family]
    written = 0
    for _ in range(60):
        n = rng.randint(1, 80)
        ts = sorted(rng.sample(range(-10**9, 4 * 10**9), n))
        bars = [(t, *(value(rng) for _ in range(5))) for t in ts]
        cols = Columns.from_bars(bars)
        text = csv_lines(cols.ts, cols.values)
        expected = "".join(map(format_row, bars)).encode()
        if text is not None:
            written += 1
            assert text == expected
        assert csv_text(cols) == expected
    if family not in ("decimal fractions", "full doubles"):  # mostly beyond its exact range
        assert written > 30


def test_csv_lines_decline_what_they_cannot_write_exactly() -> None:
    from ktrdr_collect.storage.csv_lines import csv_lines

    ts = np.array([0])
    for value in (2.0**50, 1e16, 1 / 3, 0.1 + 0.2, 1e-13):
        assert csv_lines(ts, np.full((1, 5), value)) is None
    assert csv_lines(np.array([-10**12]), np.ones((1, 5))) is None  # the year -29719 is not four digits
    assert csv_lines(ts, np.ones((1, 5))) == b"1970-01-01T00:00:00Z,1,1,1,1,1\n"


def test_csv_text_of_non_finite_values_spells_them_like_format_row() -> None:
    bars = [(0, float("nan"), 1.0, 1.0, 1.0, float("inf"))]
    assert csv_text(bars) == format_row(bars[0]).encode()


def test_columns_are_a_sequence_of_bars() -> None:
    bars = [(60, 1.0, 2.0, 0.5, 1.5, 10.0), (120, 1.5, 2.5, 1.0, 2.0, 0.0), (180, 2.0, 2.0, 2.0, 2.0, 3.0)]
    cols = Columns.from_bars(bars)
    assert len(cols) == 3 and cols[1] == bars[1] and cols[-1] == bars[-1]
    assert list(cols) == bars and cols == bars and bars == cols
    assert cols[1:] == bars[1:] and isinstance(cols[1:], Columns)
    assert cols.window(100, 180) == bars[1:2]
    shuffled = Columns.from_bars([bars[2], bars[0], (60, 9.0, 9.0, 9.0, 9.0, 9.0), bars[1]])
    assert shuffled.sorted_unique() == [(60, 9.0, 9.0, 9.0, 9.0, 9.0), bars[1], bars[2]]  # the last given wins
    assert Columns.concat([cols[:1], cols[1:]]) == cols
    assert Columns.from_bars([]) == [] and not Columns.empty()


def _write(path: Path, bars: list) -> None:
    path.write_bytes(HEADER.encode() + csv_text(bars))


def _bar(ts: int, x: float) -> tuple[int, float, float, float, float, float]:
    return (ts, x, x + 1, x - 1, x + 0.5, float(ts % 7))


@pytest.mark.parametrize("seed", range(30))
def test_merge_by_lines_equals_merge_by_rows(tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prepend, overlap, interleave, rewrite-unchanged: the line-wise merge writes the same file and
    counts the same rows as parsing every row did (and never falls back to parsing every row)."""
    rows_path = csv_store._merge_rows
    monkeypatch.setattr(csv_store, "_merge_rows", lambda *a: pytest.fail("fell back to the row-wise merge"))
    rng = random.Random(seed)
    stored = sorted({rng.randrange(0, 400) * 60 for _ in range(rng.randint(1, 120))})
    new_ts = sorted({rng.randrange(0, 400) * 60 for _ in range(rng.randint(1, 120))})
    old = [_bar(ts, 100.0) for ts in stored]
    new = [_bar(ts, 100.0 if rng.random() < 0.5 else 200.25) for ts in new_ts]
    fast, slow = tmp_path / "fast.csv", tmp_path / "slow.csv"
    _write(fast, old)
    _write(slow, old)
    written, stats = csv_store.merge_into(fast, Columns.from_bars(new))
    slow_written, slow_stats = rows_path(slow, new)
    assert fast.read_bytes() == slow.read_bytes()
    assert written == slow_written
    assert (stats.rows, stats.first, stats.last) == (slow_stats.rows, slow_stats.first, slow_stats.last)
    known = csv_store.FileStats.of(stats.rows, fast.stat(), stats.first, stats.last)
    more = [_bar(ts, 300.5) for ts in sorted({rng.randrange(0, 400) * 60 for _ in range(20)})]
    _, again = csv_store.merge_into(fast, Columns.from_bars(more), known)  # rows from the record
    _, counted = csv_store.merge_into(slow, Columns.from_bars(more))  # rows counted in the file
    assert fast.read_bytes() == slow.read_bytes()
    assert again.rows == counted.rows == len(fast.read_bytes().splitlines()) - 1


def test_backfill_parses_no_stored_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "S.csv"
    _write(path, [_bar(ts, 50.0) for ts in range(600_000, 660_000, 60)])
    stored = path.read_bytes()[len(HEADER):]
    parsed: list[str] = []
    real = csv_store.parse_ts
    monkeypatch.setattr(csv_store, "parse_ts", lambda text: parsed.append(text) or real(text))
    copied: list[int] = []
    copy_span = files.copy_span
    monkeypatch.setattr(files, "copy_span", lambda span, out: copied.append(span.length) or copy_span(span, out))
    written, stats = csv_store.merge_into(path, Columns.from_bars([_bar(ts, 9.0) for ts in range(0, 6000, 60)]))
    assert written == 100 and stats.rows == 1100 and (stats.first, stats.last) == (0, 659_940)
    assert len(parsed) < 40  # a binary search's few lines, not the 1,000 stored ones
    assert sum(copied) == len(stored)  # the stored lines went file to file
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER.strip() and len(lines) == 1101 and lines[1].startswith("1970-01-01T00:00:00Z,9,")


def test_a_file_out_of_order_loses_no_line(tmp_path: Path) -> None:
    """We write files in time order; one that is not (edited by hand) keeps every line it had."""
    path = tmp_path / "S.csv"
    path.write_text(HEADER + "".join(map(format_row, [_bar(600, 1.0), _bar(0, 2.0)])))
    written, stats = csv_store.merge_into(path, Columns.from_bars([_bar(300, 3.0)]))
    assert sorted(line.split(",")[0] for line in path.read_text().splitlines()[1:]) == [
        "1970-01-01T00:00:00Z", "1970-01-01T00:05:00Z", "1970-01-01T00:10:00Z"]
    assert written == 1 and stats.rows == 3


def test_a_file_with_a_line_that_is_no_bar_is_merged_row_by_row(tmp_path: Path) -> None:
    path = tmp_path / "S.csv"
    path.write_text(HEADER + format_row(_bar(0, 2.0)) + "\n" + format_row(_bar(600, 1.0)))
    written, stats = csv_store.merge_into(path, Columns.from_bars([_bar(300, 3.0)]))
    assert [line.split(",")[0] for line in path.read_text().splitlines()[1:]] == [
        "1970-01-01T00:00:00Z", "1970-01-01T00:05:00Z", "1970-01-01T00:10:00Z"]
    assert written == 1 and stats.rows == 3


def test_iso_stamps_are_format_ts() -> None:
    import numpy as np

    from ktrdr_collect.storage.csv_lines import iso_stamps
    from ktrdr_collect.storage.timeframes import format_ts

    rng = random.Random(7)
    stamps = [rng.randint(-62_135_596_800, 253_402_300_799) for _ in range(5000)]  # years 1 .. 9999
    stamps += [0, -1, 86_399, 86_400, 951_782_400, 951_868_800, 4_107_542_400, 253_402_300_799, -62_135_596_800]
    assert iso_stamps(np.array(stamps)) == [format_ts(ts).encode() for ts in stamps]


def test_csv_text_of_a_batch_larger_than_a_chunk() -> None:
    rng = random.Random(11)
    bars = [(60 * i, *(_value(rng) for _ in range(5))) for i in range(csv_store._TEXT_CHUNK * 2 + 7)]
    assert csv_text(Columns.from_bars(bars)) == "".join(map(format_row, bars)).encode()


def test_csv_lines_from_many_threads_while_its_tables_are_made() -> None:
    """The digit tables are made on first use: threads arriving together each see whole tables."""
    import threading

    from ktrdr_collect.storage import csv_lines

    csv_lines._tables.cache_clear()
    csv_lines._clock_tables.cache_clear()
    bars = [(86_400 * i + 61, 1.5, 2.25, 0.5, 1.0, 1000.0 + i) for i in range(50)]
    cols = Columns.from_bars(bars)
    expected = "".join(map(format_row, bars)).encode()
    start = threading.Barrier(8)
    texts: list[bytes | None] = []

    def write() -> None:
        start.wait()
        texts.append(csv_lines.csv_lines(cols.ts, cols.values))

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert texts == [expected] * 8
