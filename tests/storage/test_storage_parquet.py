"""The Parquet store: layout, O(segment) appends, compaction, dedupe, crash leftovers, locking, the
engine and the CLI end to end."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

import pandas as pd  # noqa: E402  (pyarrow's pandas conversion; pandas comes with the test setup)
from typer.testing import CliRunner  # noqa: E402

from ktrdr_collect.cli.main import app  # noqa: E402
from ktrdr_collect.engine.engine import ProcessingEngine  # noqa: E402
from ktrdr_collect.errors import CollectError  # noqa: E402
from ktrdr_collect.providers.demo import DemoProvider  # noqa: E402
from ktrdr_collect.storage import parquet_store  # noqa: E402
from ktrdr_collect.storage.csv_store import Bar, CsvStore  # noqa: E402
from ktrdr_collect.storage.open import open_store  # noqa: E402
from ktrdr_collect.storage.parquet_store import ParquetStore  # noqa: E402
from ktrdr_collect.storage.timeframes import parse_ts  # noqa: E402

T0 = parse_ts("2024-01-02T14:30:00Z")
KEY = ("demo", "1m", "BTC/USDT")
START, END = "2023-01-02", "2023-03-01"  # 42 weekdays
COLUMNS = ["timestamp", "open", "high", "low", "close", "volume"]


def make_bars(start: int, n: int, step: int = 60, price: float = 100.0) -> list[Bar]:
    return [
        (start + i * step, price + i, price + i + 0.5, price + i - 0.25, price + i + 0.125, 1000.0 + i)
        for i in range(n)
    ]


def span(bars: list[Bar]) -> tuple[int, int]:
    return bars[0][0], bars[-1][0] + 60


def frame(bars: list[Bar]) -> pd.DataFrame:
    df = pd.DataFrame(bars, columns=COLUMNS)
    df["timestamp"] = pd.to_datetime(df["timestamp"], unit="s", utc=True)
    return df


LABELS = ["provider", "timeframe", "symbol"]


def assert_pandas_reads(path: Path, bars: list[Bar]) -> None:
    df = pd.read_parquet(path)
    assert list(df.columns) == LABELS + COLUMNS  # every part names its series
    provider, timeframe = path.parent.parent.name, path.parent.name
    assert set(df["provider"]) == {provider} and set(df["timeframe"]) == {timeframe}
    assert str(df["timestamp"].dtype) == "datetime64[ns, UTC]"
    df = df[COLUMNS]
    assert str(df["timestamp"].dt.tz) == "UTC"
    assert df["timestamp"].is_monotonic_increasing and df["timestamp"].is_unique
    got = df.assign(timestamp=df["timestamp"].astype("datetime64[s, UTC]"))
    pd.testing.assert_frame_equal(got, frame(bars), check_dtype=False)
    assert [int(t.timestamp()) for t in df["timestamp"]] == [b[0] for b in bars]


def part_names(store: ParquetStore) -> list[str]:
    return sorted(os.listdir(store.path(*KEY)))


def test_layout_and_round_trip(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    bars = make_bars(T0, 500, price=0.0001234)
    bars[0] = (T0, 12345.6789, 12346.0, 0.1 + 0.2, 1e-8, 1200.0)
    store.write(*KEY, bars, span(bars))
    path = tmp_path / "demo" / "1m" / "BTC_USDT.parquet"
    assert store.path(*KEY) == path and path.is_dir()
    assert part_names(store) == ["part-20240102T143000Z-20240102T224900Z.parquet"]
    assert store.read(*KEY) == bars  # floats round-trip exactly
    assert store.first_ts(*KEY) == T0 and store.last_ts(*KEY) == T0 + 499 * 60
    assert store.read(*KEY, start=T0 + 60, end=T0 + 180) == bars[1:3]
    meta = tmp_path / "demo" / "1m" / ".ktrdr"
    assert json.loads((meta / "BTC_USDT.parquet.coverage.json").read_text()) == {
        "version": 1, "ranges": [[T0, T0 + 500 * 60]]
    }
    assert (meta / "BTC_USDT.parquet.lock").exists()
    assert store.coverage(*KEY) == [span(bars)]
    assert ParquetStore(tmp_path).coverage(*KEY) == [span(bars)]
    assert_pandas_reads(path, bars)


def test_missing_dataset_and_empty_write(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    assert store.read(*KEY) == [] and store.coverage(*KEY) == []
    assert store.first_ts(*KEY) is None and store.last_ts(*KEY) is None
    store.write(*KEY, [], (T0, T0 + 3600))  # a range with no bars (a holiday) is still covered
    assert store.coverage(*KEY) == [(T0, T0 + 3600)] and not store.path(*KEY).exists()


def test_coverage_is_separate_from_a_csv_of_the_same_symbol(tmp_path: Path) -> None:
    CsvStore(tmp_path).write(*KEY, make_bars(T0, 3), (T0, T0 + 180))
    store = ParquetStore(tmp_path)
    assert store.coverage(*KEY) == [] and store.read(*KEY) == []


def test_appends_write_one_new_part_and_leave_earlier_parts_alone(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    bars = make_bars(T0, 100)
    store.write(*KEY, bars[:10], span(bars[:10]))
    for k in range(1, 10):
        before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in store.path(*KEY).iterdir()}
        seg = bars[k * 10 : (k + 1) * 10]
        store.write(*KEY, seg, span(seg))
        after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in store.path(*KEY).iterdir()}
        assert len(after) == k + 1
        assert {n: after[n] for n in before} == before  # earlier parts neither rewritten nor touched
    assert store.read(*KEY) == bars
    assert_pandas_reads(store.path(*KEY), bars)


def test_compaction_bounds_the_parts_and_keeps_the_data(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path, max_parts=4)
    bars = make_bars(T0, 200)
    for k in range(20):
        seg = bars[k * 10 : (k + 1) * 10]
        store.write(*KEY, seg, span(seg))
        assert len(part_names(store)) <= 4
        assert store.read(*KEY) == bars[: (k + 1) * 10]
    assert len(part_names(store)) < 20
    assert store.coverage(*KEY) == [span(bars)]
    assert_pandas_reads(store.path(*KEY), bars)


def test_backfills_and_overlapping_rewrites_give_sorted_unique_rows(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    bars = make_bars(T0, 90)
    store.write(*KEY, bars[60:], span(bars[60:]))
    store.write(*KEY, bars[:20], span(bars[:20]))  # backfill before everything: a new part
    store.write(*KEY, bars[30:40], span(bars[30:40]))  # into a gap: a new part
    assert len(part_names(store)) == 3
    assert store.read(*KEY) == bars[:20] + bars[30:40] + bars[60:]
    assert_pandas_reads(store.path(*KEY), bars[:20] + bars[30:40] + bars[60:])
    # a refetch over parts and gaps, with changed values: merged, the new values win
    changed = [(ts, o + 1000, h, low, c, v) for ts, o, h, low, c, v in bars[10:70]]
    store.write(*KEY, changed, span(changed))
    expected = bars[:10] + changed + bars[70:]
    assert store.read(*KEY) == expected
    assert_pandas_reads(store.path(*KEY), expected)
    store.write(*KEY, changed, span(changed))  # the exact same segment again
    assert store.read(*KEY) == expected and len(part_names(store)) == 1
    assert store.coverage(*KEY) == [span(bars)]


def test_crash_leftovers_are_ignored_then_cleaned_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ParquetStore(tmp_path)
    bars = make_bars(T0, 30)
    store.write(*KEY, bars[:10], span(bars[:10]))
    store.write(*KEY, bars[20:], span(bars[20:]))
    # crash 1: mid part write (a torn temp file); crash 2: after a merge renamed its part in, before
    # it deleted the parts it replaced
    (store.path(*KEY) / ".part-20240102T150000Z-20240102T151000Z.parquet.tmp").write_bytes(b"PAR1 torn")
    monkeypatch.setattr(parquet_store, "remove_files", lambda paths: None)
    store.write(*KEY, bars[5:25], (T0 + 5 * 60, T0 + 25 * 60))
    monkeypatch.undo()
    assert len(part_names(store)) == 4  # tmp + two hidden replaced parts + the merged one
    assert_pandas_reads(store.path(*KEY), bars)  # pyarrow sees none of the leftovers
    fresh = ParquetStore(tmp_path)
    assert fresh.read(*KEY) == bars
    assert fresh.first_ts(*KEY) == T0 and fresh.last_ts(*KEY) == bars[-1][0]
    fresh.write(*KEY, [], (T0, T0 + 30 * 60))  # no bars, but its look at the coverage cleans up
    assert part_names(store) == ["part-20240102T143000Z-20240102T145900Z.parquet"]
    extra = make_bars(T0 + 30 * 60, 5)
    fresh.write(*KEY, extra, span(extra))
    assert part_names(store) == [
        "part-20240102T143000Z-20240102T145900Z.parquet", "part-20240102T150000Z-20240102T150400Z.parquet"
    ]
    assert_pandas_reads(store.path(*KEY), bars + extra)


def test_pandas_reads_the_timeframe_folder_despite_metadata(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    store.write(*KEY, make_bars(T0, 5), (T0, T0 + 300))
    store.write("demo", "1m", "ETH/USD", make_bars(T0, 7), (T0, T0 + 420))
    assert (tmp_path / "demo" / "1m" / ".ktrdr").is_dir()
    assert len(pd.read_parquet(tmp_path / "demo" / "1m")) == 12


def test_engine_collects_then_second_run_makes_no_requests(tmp_path: Path) -> None:
    store = ParquetStore(tmp_path)
    provider = DemoProvider({"latency_ms": 0})
    first = ProcessingEngine(provider, store, workers=2).process_batch(["AAPL", "MSFT"], "1d", START, END)
    assert all(r.ok for r in first) and [r.candles for r in first] == [42, 42]
    assert sum(r.requests for r in first) == 2
    bars = store.read("demo", "1d", "AAPL")
    assert len(bars) == 42 and store.coverage("demo", "1d", "AAPL")
    again = ProcessingEngine(provider, ParquetStore(tmp_path), workers=2).process_batch(
        ["AAPL", "MSFT"], "1d", START, END
    )
    assert all(r.ok for r in again) and sum(r.requests for r in again) == 0
    csv = CsvStore(tmp_path / "csv")
    ProcessingEngine(provider, csv, workers=1).process_batch(["AAPL"], "1d", START, END)
    assert csv.read("demo", "1d", "AAPL") == bars  # the same bars in both formats
    assert_pandas_reads(store.path("demo", "1d", "AAPL"), bars)


def test_two_threads_writing_one_symbol(tmp_path: Path) -> None:
    segments = 40
    bars = make_bars(T0, segments * 10)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(parity: int) -> None:
        store = ParquetStore(tmp_path, max_parts=6)  # compactions happen while the other writes
        ks = [k for k in range(segments) if k % 2 == parity]
        if parity:
            ks.reverse()  # backfills interleave with appends
        barrier.wait()
        try:
            for k in ks:
                seg = bars[k * 10 : (k + 1) * 10 + 3]  # overlapping the next segment: merges too
                store.write(*KEY, seg, span(seg))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store = ParquetStore(tmp_path)
    assert store.read(*KEY) == bars and store.coverage(*KEY) == [span(bars)]
    assert not [n for n in part_names(store) if n.startswith(".")]
    assert_pandas_reads(store.path(*KEY), bars)


def test_missing_pyarrow_is_one_clear_error(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(CollectError) as info:
        open_store("parquet", tmp_path)
    assert str(info.value) == "--format parquet needs pyarrow: pip install 'ktrdr-collect[parquet]'"
    assert info.value.exit_code == 1
    assert isinstance(open_store("csv", tmp_path), CsvStore)  # csv does not need it
    r = CliRunner().invoke(app, ["start", "AAPL", "--format", "parquet", "--days", "5"])
    assert r.exit_code == 1
    assert "Error: --format parquet needs pyarrow: pip install 'ktrdr-collect[parquet]'" in r.output
    assert not (home / "jobs").exists()  # refused before any job is created


def test_open_store_gives_a_parquet_store(tmp_path: Path) -> None:
    assert isinstance(open_store("parquet", tmp_path), ParquetStore)


def test_cli_start_format_parquet_is_readable_by_pandas(home: Path) -> None:
    window = ["--start", "2023-01-02", "--end", "2023-03-01", "-o", "latency_ms=0"]
    r = CliRunner().invoke(app, ["start", "AAPL", "--format", "parquet", *window])
    assert r.exit_code == 0, r.output
    assert "AAPL: completed, 42 candles" in r.stdout.splitlines()
    dataset = home / "data" / "demo" / "1d" / "AAPL.parquet"
    df = pd.read_parquet(dataset)
    assert len(df) == 42 and list(df.columns) == LABELS + COLUMNS
    assert set(df["symbol"]) == {"AAPL"} and set(df["provider"]) == {"demo"} and set(df["timeframe"]) == {"1d"}
    assert df["timestamp"].is_monotonic_increasing and df["timestamp"].is_unique
    assert str(df["timestamp"].iloc[0]) == "2023-01-02 00:00:00+00:00"
    assert not (home / "data" / "demo" / "1d" / "AAPL.csv").exists()
    again = CliRunner().invoke(app, ["start", "AAPL", "--format", "parquet", *window])
    assert again.exit_code == 0 and "data already up to date" in again.stdout


# -- a merge is a commit: killed at every step, readers never see old and new parts together -------

SCENARIO_SRC = """
from ktrdr_collect.storage.parquet_store import ParquetStore

T0, KEY = 1704205800, ("demo", "1m", "BTC/USDT")


def make_bars(start, n, add=0.0):
    return [(start + 60 * i, 100.0 + i + add, 100.5 + i + add, 99.75 + i + add, 100.125 + i + add, 1000.0 + i)
            for i in range(n)]


def write(store, bars):
    store.write(*KEY, bars, (bars[0][0], bars[-1][0] + 60))


def prepare_scenario(root):
    store = ParquetStore(root, max_parts=3)
    for start, n in ((0, 10), (20, 10), (32, 4)):
        write(store, make_bars(T0 + 60 * start, n))


def run_scenario(root, scenario):
    # merge: a segment over two parts; replace: the whole series (as restamping does);
    # compact: a fourth part beyond max_parts=3, so the smallest run is merged
    store = ParquetStore(root, max_parts=3)
    if scenario == "merge":
        write(store, make_bars(T0 + 60 * 5, 20, add=1000.0))
    elif scenario == "replace":
        bars = make_bars(T0 + 60 * 2, 36, add=1000.0)
        store.replace(*KEY, bars, [(bars[0][0], bars[-1][0] + 60)])
    else:
        write(store, make_bars(T0 + 60 * 38, 2))
"""
CRASH_CHILD = SCENARIO_SRC + """
import os, signal, sys
from pathlib import Path

calls, kill_at = 0, int(sys.argv[3])


def killing(fn):
    def call(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return call


for name in ("replace", "rename", "unlink"):  # every change a reader can see
    setattr(os, name, killing(getattr(os, name)))
run_scenario(Path(sys.argv[1]), sys.argv[2])
print(calls)
"""
SCENARIOS = ("merge", "replace", "compact")
_scenarios: dict[str, object] = {}
exec(SCENARIO_SRC, _scenarios)  # the parent prepares and completes the writes the children make


def run_child(root: Path, scenario: str, kill_at: int) -> subprocess.Popen[str]:
    """The write, in a process that SIGKILLs itself at its `kill_at`-th rename or unlink (0: never)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen([sys.executable, "-c", CRASH_CHILD, str(root), scenario, str(kill_at)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def pyarrow_rows(path: Path) -> list[Bar]:
    df = pd.read_parquet(path)
    if "timestamp" not in df.columns:
        return []  # no visible part at all
    stamps = [int(t.timestamp()) for t in df["timestamp"]]
    values = df[["open", "high", "low", "close", "volume"]].itertuples(index=False)
    return [(ts, *map(float, row)) for ts, row in zip(stamps, values, strict=True)]  # type: ignore[misc]


def assert_seen_after_crash(root: Path, before: list[Bar], after: list[Bar]) -> None:
    dataset = ParquetStore(root).path(*KEY)
    seen = pyarrow_rows(dataset)  # pyarrow: never a row twice, never a row that was not stored
    assert len({bar[0] for bar in seen}) == len(seen), root.name
    assert set(seen) <= set(before) | set(after), root.name
    assert ParquetStore(root).read(*KEY) in (before, after), root.name  # ours: old parts or new


def assert_repaired(root: Path, scenario: str, before: list[Bar], after: list[Bar]) -> None:
    dataset = ParquetStore(root).path(*KEY)
    ParquetStore(root).coverage(*KEY)  # the next job's first look repairs what the crash left
    assert [n for n in os.listdir(dataset) if n.startswith((".", "_"))] == [], root.name
    recovered = ParquetStore(root).read(*KEY)
    assert recovered in (before, after) and pyarrow_rows(dataset) == recovered, root.name
    _scenarios["run_scenario"](root, scenario)  # type: ignore[operator]  # the job runs again
    assert ParquetStore(root).read(*KEY) == after and pyarrow_rows(dataset) == after, root.name


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_write_killed_at_any_step_leaves_old_or_new_parts_never_both(tmp_path: Path, scenario: str) -> None:
    base = tmp_path / "base"
    _scenarios["prepare_scenario"](base)  # type: ignore[operator]
    before = ParquetStore(base).read(*KEY)
    shutil.copytree(base, tmp_path / "uninterrupted")
    counting = run_child(tmp_path / "uninterrupted", scenario, 0)
    out, err = counting.communicate(timeout=60)
    assert counting.returncode == 0, err
    steps = int(out)
    after = ParquetStore(tmp_path / "uninterrupted").read(*KEY)
    assert steps >= 3 and after != before
    roots = [tmp_path / f"killed-at-{k}" for k in range(1, steps + 1)]
    children = []
    for k, root in enumerate(roots, start=1):
        shutil.copytree(base, root)
        children.append(run_child(root, scenario, k))
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, err
    for root in roots:
        assert_seen_after_crash(root, before, after)
    for root in roots:
        assert_repaired(root, scenario, before, after)


def test_parts_written_before_the_label_columns_still_read_and_merge(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    old_bars = make_bars(T0, 2, step=86400)
    folder = tmp_path / "demo" / "1d" / "AAPL.parquet"
    folder.mkdir(parents=True)
    stamps = pa.array([b[0] * 1000 for b in old_bars], pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    old = pa.table([stamps, *[pa.array([b[i] for b in old_bars], pa.float64()) for i in range(1, 6)]],
                   names=COLUMNS)  # how parts were written before: timestamp[ms], no labels
    pq.write_table(old, folder / parquet_store.part_name(old_bars[0][0], old_bars[-1][0]))
    store = ParquetStore(tmp_path)
    assert store.read("demo", "1d", "AAPL") == old_bars
    new = make_bars(T0 + 2 * 86400, 1, price=200.0)
    store.write("demo", "1d", "AAPL", new, (new[0][0], new[0][0] + 86400))
    assert store.read("demo", "1d", "AAPL") == old_bars + new
    duckdb = pytest.importorskip("duckdb")
    from ktrdr_collect.storage.inventory import find_series
    from ktrdr_collect.storage.query import connect

    con = connect(tmp_path, find_series(tmp_path))
    assert con.execute("select symbol, count(*) from bars group by 1").fetchall() == [("AAPL", 3)]
    assert isinstance(con, duckdb.DuckDBPyConnection)
