import json
import os
from pathlib import Path

import pytest

from ktrdr_collect.storage import csv_store
from ktrdr_collect.storage.csv_store import Bar, CsvStore
from ktrdr_collect.storage.timeframes import parse_ts

T0 = parse_ts("2024-01-02T14:30:00Z")
KEY = ("demo", "1m", "BTC/USDT")


def make_bars(start: int, n: int, step: int = 60, price: float = 100.0) -> list[Bar]:
    return [
        (start + i * step, price + i, price + i + 0.5, price + i - 0.25, price + i + 0.125, 1000.0 + i)
        for i in range(n)
    ]


def data_lines(store: CsvStore) -> list[str]:
    return store.path(*KEY).read_text().split("\n")


def test_layout_and_exact_bytes(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    bars: list[Bar] = [
        (T0, 12345.6789, 12346.0, 0.1 + 0.2, 1e-8, 1200.0),
        (T0 + 60, 1.5, 2.0, 1.0, 1.25, 0.5),
    ]
    store.write(*KEY, bars, (T0, T0 + 120))
    path = tmp_path / "demo" / "1m" / "BTC_USDT.csv"
    assert store.path(*KEY) == path
    assert path.read_bytes() == (
        b"timestamp,open,high,low,close,volume\n"
        b"2024-01-02T14:30:00Z,12345.6789,12346,0.30000000000000004,0.00000001,1200\n"
        b"2024-01-02T14:31:00Z,1.5,2,1,1.25,0.5\n"
    )
    assert store.read(*KEY) == bars
    coverage_file = tmp_path / "demo" / "1m" / ".ktrdr" / "BTC_USDT.coverage.json"
    st = path.stat()  # the record also says which file it was written with, and its rows
    file = {"rows": 2, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "first": T0, "last": T0 + 60}
    assert json.loads(coverage_file.read_text()) == {"version": 1, "ranges": [[T0, T0 + 120]], "file": file}
    assert (tmp_path / "demo" / "1m" / ".ktrdr" / "BTC_USDT.lock").exists()


def test_round_trip_and_determinism(tmp_path: Path) -> None:
    bars = make_bars(T0, 500, price=0.0001234)
    a, b = CsvStore(tmp_path / "a"), CsvStore(tmp_path / "b")
    a.write(*KEY, bars, (T0, T0 + 500 * 60))
    b.write(*KEY, bars[250:], (T0 + 250 * 60, T0 + 500 * 60))
    b.write(*KEY, bars[:250], (T0, T0 + 250 * 60))  # backfill takes the rewrite path
    assert a.read(*KEY) == bars
    assert a.path(*KEY).read_bytes() == b.path(*KEY).read_bytes()
    assert a.first_ts(*KEY) == T0 and a.last_ts(*KEY) == T0 + 499 * 60
    assert a.read(*KEY, start=T0 + 60, end=T0 + 180) == bars[1:3]
    assert a.coverage(*KEY) == b.coverage(*KEY) == [(T0, T0 + 500 * 60)]


def test_missing_file(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    assert store.read(*KEY) == []
    assert store.first_ts(*KEY) is None and store.last_ts(*KEY) is None
    assert store.coverage(*KEY) == []


def test_empty_range_is_recorded_without_bars(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    store.write(*KEY, [], (T0, T0 + 3600))
    assert store.coverage(*KEY) == [(T0, T0 + 3600)]
    assert store.read(*KEY) == []
    store.write(*KEY, make_bars(T0 + 3600, 2), (T0 + 3600, T0 + 7200))
    assert store.coverage(*KEY) == [(T0, T0 + 7200)]


def test_rejects_bad_bars(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    with pytest.raises(ValueError):
        store.write(*KEY, make_bars(T0, 2)[::-1], (T0, T0 + 120))
    with pytest.raises(ValueError):
        store.write(*KEY, make_bars(T0, 3), (T0, T0 + 120))
    with pytest.raises(ValueError):
        store.write(*KEY, [make_bars(T0, 1)[0]] * 2, (T0, T0 + 120))
    assert store.coverage(*KEY) == []


def proc_read_chars() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs /proc/self/io to count bytes read")
def test_append_reads_only_the_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CsvStore(tmp_path)
    n = 30_000
    store.write(*KEY, make_bars(T0, n), (T0, T0 + n * 60))
    path = store.path(*KEY)
    size, inode = path.stat().st_size, path.stat().st_ino
    assert size > 1_000_000

    def no_rewrite(*args: object) -> None:
        raise AssertionError("append must not rewrite the file")

    with monkeypatch.context() as m:
        m.setattr(csv_store, "merge_rewrite", no_rewrite)
        before = proc_read_chars()
        store.write(*KEY, make_bars(T0 + n * 60, 10), (T0 + n * 60, T0 + (n + 10) * 60))
        read = proc_read_chars() - before
    assert read < 64_000, f"append read {read} bytes of a {size} byte file"
    assert path.stat().st_ino == inode
    assert store.last_ts(*KEY) == T0 + (n + 9) * 60

    # Control: a backfill must read the whole file, proving the counter sees file reads.
    before = proc_read_chars()
    store.write(*KEY, make_bars(T0 - 600, 10), (T0 - 600, T0))
    assert proc_read_chars() - before > size
    assert len(store.read(*KEY)) == n + 20


def test_torn_last_line_is_ignored_and_dropped(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    bars = make_bars(T0, 5)
    store.write(*KEY, bars, (T0, T0 + 300))
    path = store.path(*KEY)
    with open(path, "a") as f:
        f.write("2024-01-02T14:35:00Z,105.123456789,106.123456789,104.123456789,105.5")  # crash mid-append
    assert store.read(*KEY) == bars
    assert store.last_ts(*KEY) == T0 + 240
    assert store.coverage(*KEY) == [(T0, T0 + 300)]
    more = [(T0 + 300, 1.0, 1.0, 1.0, 1.0, 1.0)]  # shorter than the torn line
    store.write(*KEY, more, (T0 + 300, T0 + 360))
    assert store.read(*KEY) == bars + more
    lines = data_lines(store)
    assert lines[-1] == "" and len(lines) == 1 + 6 + 1
    assert all(line.count(",") == 5 for line in lines[:-1])


def test_torn_line_dropped_on_rewrite_path(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    bars = make_bars(T0, 5)
    store.write(*KEY, bars, (T0, T0 + 300))
    with open(store.path(*KEY), "a") as f:
        f.write("2024-01-02T14:35:00Z,1")
    store.write(*KEY, make_bars(T0 - 120, 2), (T0 - 120, T0))
    assert store.read(*KEY) == make_bars(T0 - 120, 2) + bars
    assert store.path(*KEY).read_text().endswith("\n")
    assert "14:35:00Z" not in store.path(*KEY).read_text()


def test_torn_header(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    path = store.path(*KEY)
    path.parent.mkdir(parents=True)
    path.write_text("timesta")
    assert store.read(*KEY) == [] and store.last_ts(*KEY) is None
    store.write(*KEY, make_bars(T0, 2), (T0, T0 + 120))
    assert data_lines(store)[0] == "timestamp,open,high,low,close,volume"
    assert store.read(*KEY) == make_bars(T0, 2)


def test_backfill_merge(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    late, early = make_bars(T0 + 6000, 10), make_bars(T0, 10)
    store.write(*KEY, late, (T0 + 6000, T0 + 6600))
    store.write(*KEY, early, (T0, T0 + 600))
    assert store.read(*KEY) == early + late
    assert store.coverage(*KEY) == [(T0, T0 + 600), (T0 + 6000, T0 + 6600)]
    middle = make_bars(T0 + 600, 90)
    store.write(*KEY, middle, (T0 + 600, T0 + 6000))
    assert store.read(*KEY) == early + middle + late
    assert store.coverage(*KEY) == [(T0, T0 + 6600)]


def test_same_timestamp_is_replaced(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    store.write(*KEY, make_bars(T0, 10), (T0, T0 + 600))
    fresh = make_bars(T0 + 300, 10, price=7.0)  # overlaps the last five stored rows
    store.write(*KEY, fresh, (T0 + 300, T0 + 900))
    assert store.read(*KEY) == make_bars(T0, 5) + fresh
    timestamps = [bar[0] for bar in store.read(*KEY)]
    assert timestamps == sorted(set(timestamps))
    # Re-fetch of exactly the last stored bar (a retry after a crash) also replaces it.
    store.write(*KEY, [(T0 + 840, 1.0, 1.0, 1.0, 1.0, 1.0)], (T0 + 840, T0 + 900))
    assert store.read(*KEY)[-1] == (T0 + 840, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert len(store.read(*KEY)) == 15


def test_coverage_persists_across_instances(tmp_path: Path) -> None:
    CsvStore(tmp_path).write(*KEY, make_bars(T0, 3), (T0 - 3600, T0 + 3600))
    assert CsvStore(tmp_path).coverage(*KEY) == [(T0 - 3600, T0 + 3600)]


def write_user_csv(store: CsvStore, text: str) -> None:
    path = store.path(*KEY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_coverage_derived_from_copied_csv(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    write_user_csv(
        store,
        "timestamp,open,high,low,close,volume\n"
        "2024-01-02T14:30:00Z,1,2,0.5,1.5,10\n"
        "2024-01-02T14:31:00+00:00,1,2,0.5,1.5,10\n",
    )
    assert store.coverage(*KEY) == [(T0, T0 + 61)]
    store.write(*KEY, make_bars(T0 + 3600, 2), (T0 + 3600, T0 + 3720))
    assert store.coverage(*KEY) == [(T0, T0 + 61), (T0 + 3600, T0 + 3720)]
    assert len(store.read(*KEY)) == 4


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"version": 2, "ranges": []}', '{"version": 1, "ranges": [[1, "x"]]}', ""],
)
def test_damaged_coverage_means_fetch_again(tmp_path: Path, content: str) -> None:
    """A damaged record never becomes a range derived from the data: that could hide holes."""
    store = CsvStore(tmp_path)
    store.write(*KEY, make_bars(T0, 3), (T0 - 600, T0 + 600))
    store.coverage_path(*KEY).write_text(content)
    assert store.coverage(*KEY) == []
    store.write(*KEY, make_bars(T0, 3), (T0 - 600, T0 + 600))  # the refetch merges, nothing doubles
    assert store.coverage(*KEY) == [(T0 - 600, T0 + 600)]
    assert len(store.read(*KEY)) == 3
    assert json.loads(store.coverage_path(*KEY).read_text())["version"] == 1


def test_crlf_and_blank_lines_are_tolerated(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    write_user_csv(store, "timestamp,open,high,low,close,volume\r\n2024-01-02T14:30:00Z,1,2,0.5,1.5,10\r\n\n")
    assert store.read(*KEY) == [(T0, 1.0, 2.0, 0.5, 1.5, 10.0)]
    assert store.last_ts(*KEY) == T0
    store.write(*KEY, make_bars(T0 + 60, 1), (T0 + 60, T0 + 120))
    assert [bar[0] for bar in store.read(*KEY)] == [T0, T0 + 60]


def test_long_tail_line(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    write_user_csv(store, "timestamp,open,high,low,close,volume\n" + "2024-01-02T14:30:00Z,1,2,0.5,1.5,10\n")
    with open(store.path(*KEY), "a") as f:
        f.write("\n" * 10_000)  # more blank tail than one read chunk
    assert store.last_ts(*KEY) == T0


def test_rejects_unsafe_names(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    with pytest.raises(ValueError):
        store.path("demo", "1m", "../etc")
    with pytest.raises(ValueError):
        store.path("../x", "1m", "AAPL")
    with pytest.raises(ValueError):
        store.path("demo", "2m", "AAPL")


# --- plain decimals, never exponent notation (CONTRACT.md) ---------------------------------------


@pytest.mark.parametrize(("value", "text"), [
    (5e-05, "0.00005"), (0.00005012, "0.00005012"), (1e-08, "0.00000001"), (-1.2e-07, "-0.00000012"),
    (1.2345678901234568e-05, "0.000012345678901234568"), (1e16, "10000000000000000"),
    (1.5e16, "15000000000000000"), (123456789012345678.0, "123456789012345680"),
])
def test_format_number_writes_plain_decimals(value: float, text: str) -> None:
    assert csv_store.format_number(value) == text
    assert float(text) == value


def test_format_number_round_trips_every_magnitude() -> None:
    values = [m * 10.0 ** e for e in range(-12, 22) for m in (1.0, 1.5, 3.0000000000000004, 9.87654321)]
    for value in values:
        text = csv_store.format_number(value)
        assert "e" not in text and float(text) == value, (value, text)
        assert text == csv_store.format_number(float(text))  # stable: writing what was read changes nothing


def test_format_row_with_tiny_prices_is_plain_and_parses_back() -> None:
    bar: Bar = (T0, 5e-05, 5.1e-05, 4.9e-05, 0.00005012, 1e16)
    line = csv_store.format_row(bar)
    assert line == "2024-01-02T14:30:00Z,0.00005,0.000051,0.000049,0.00005012,10000000000000000\n"
    assert csv_store.parse_row(line.rstrip("\n")) == bar
    ordinary: Bar = (T0, 100.0, 101.5, 99.25, 100.125, 3.0)
    assert csv_store.format_row(ordinary) == "2024-01-02T14:30:00Z,100,101.5,99.25,100.125,3\n"
    assert csv_store.format_row(ordinary) == ",".join(
        ["2024-01-02T14:30:00Z", *map(csv_store.format_number, ordinary[1:])]) + "\n"


def test_store_keeps_satoshi_prices_plain_through_append_and_merge(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    tiny = [(T0 + i * 60, (5000 + i) / 1e8, (5003 + i) / 1e8, (4998 + i) / 1e8, (5001 + i) / 1e8, (i + 1) / 1e8)
            for i in range(4)]
    store.write(*KEY, tiny[2:], (T0 + 120, T0 + 240))
    store.write(*KEY, tiny[:2], (T0, T0 + 120))  # lands before: the file is rewritten (merge path)
    text = store.path(*KEY).read_text()
    assert not [line for line in text.splitlines()[1:] if "e" in line]
    assert "2024-01-02T14:30:00Z,0.00005,0.00005003,0.00004998,0.00005001,0.00000001\n" in text
    assert store.read(*KEY) == tiny
