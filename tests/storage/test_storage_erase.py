"""Erasing bars and their fetched ranges (Store.erase), both formats: what goes, what stays, the
order of writes, and a process killed at every rename of an erase."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ktrdr_collect import files
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.providers.demo import DemoProvider
from ktrdr_collect.storage import inventory, series
from ktrdr_collect.storage.calendar import DEMO_CALENDAR
from ktrdr_collect.storage.open import open_store
from ktrdr_collect.storage.store import Store
from ktrdr_collect.storage.timeframes import DAY, parse_ts

FORMATS = ["csv", pytest.param("parquet", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("pyarrow") is None, reason="needs pyarrow"))]
START, END = parse_ts("2023-01-02T00:00:00Z"), parse_ts("2023-07-01T00:00:00Z")
CUT = (parse_ts("2023-03-01T00:00:00Z"), parse_ts("2023-04-03T00:00:00Z"))
KEY = ("demo", "1d", "AAPL")


def collect(store: Store, symbols: list[str], timeframe: str = "1d", max_bars: int = 1000) -> int:
    """Run the engine for the window; returns the provider requests it made."""
    provider = DemoProvider({"latency_ms": 0, "max_bars": max_bars})
    engine = ProcessingEngine(provider, store, workers=1, now=lambda: float(END + 30 * DAY))
    from datetime import UTC, datetime

    results = engine.process_batch(symbols, timeframe, datetime.fromtimestamp(START, UTC),
                                   datetime.fromtimestamp(END, UTC))
    assert all(r.status == "completed" for r in results), results
    return sum(r.requests for r in results)


def snapshot(store: Store, key: tuple[str, str, str]) -> tuple[list[object], list[tuple[int, int]]]:
    return list(store.read(*key)), store.coverage(*key)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every data file's bytes, and every coverage record's ranges (a record also holds its data
    file's size, time and inode, which differ from one run to another); not the locks, nor the
    hidden temp files a killed write leaves (readers never look at them; files.is_temp_name)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.endswith(".lock") or files.is_temp_name(p.name):
            continue
        data = p.read_bytes()
        if p.name.endswith(series.COVERAGE_SUFFIX):
            data = json.dumps(json.loads(data)["ranges"]).encode()
        out[str(p.relative_to(root))] = data
    return out


@pytest.fixture(params=FORMATS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return open_store(request.param, tmp_path / "data")


def test_erase_a_range_removes_its_bars_and_its_coverage(store: Store) -> None:
    collect(store, ["AAPL"])
    before = store.read(*KEY)
    removed = store.erase(*KEY, *CUT)
    kept = [b for b in before if not CUT[0] <= b[0] < CUT[1]]
    assert removed == len(before) - len(kept) == DEMO_CALENDAR.count("1d", *CUT) > 0
    assert store.read(*KEY) == kept
    assert store.coverage(*KEY) == [(START, CUT[0]), (CUT[1], END)]
    assert store.erase(*KEY, *CUT) == 0  # again: nothing left there


def test_erase_open_bounds_and_everything(store: Store) -> None:
    collect(store, ["AAPL"])
    bars = store.read(*KEY)
    assert store.erase(*KEY, None, CUT[0]) == sum(1 for b in bars if b[0] < CUT[0])
    assert store.coverage(*KEY) == [(CUT[0], END)]
    assert store.erase(*KEY, CUT[1], None) == sum(1 for b in bars if b[0] >= CUT[1])
    assert store.coverage(*KEY) == [(CUT[0], CUT[1])]
    left = len(store.read(*KEY))
    assert store.erase(*KEY) == left
    assert store.read(*KEY) == [] and store.coverage(*KEY) == []
    assert not os.path.lexists(store.path(*KEY)) or store.row_count(*KEY) == 0
    assert not store.coverage_path(*KEY).exists()  # no data, no record: the series is gone
    assert inventory.find_series(store.root) == []


def test_erase_never_touches_other_series(tmp_path: Path) -> None:
    csv = open_store("csv", tmp_path / "data")
    collect(csv, ["AAPL", "MSFT"])
    collect(csv, ["AAPL"], timeframe="1w")
    others = {k: v for k, v in tree_bytes(tmp_path / "data").items() if "AAPL.c" not in k or "/1w/" in k}
    csv.erase(*KEY, *CUT)
    after = tree_bytes(tmp_path / "data")
    assert {k: after[k] for k in others} == others


def test_next_collect_fetches_exactly_the_erased_range(store: Store, tmp_path: Path) -> None:
    first = collect(store, ["AAPL"], max_bars=20)
    before = snapshot(store, KEY)
    store.erase(*KEY, *CUT)
    requests = collect(store, ["AAPL"], max_bars=20)
    minimum = len(DEMO_CALENDAR.split("1d", *CUT, 20))
    assert first > requests == minimum == 2  # 23 bars in March 2023, 20 a request
    assert snapshot(store, KEY) == before


def test_coverage_shrinks_before_the_bars_go(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after the record shrank and before the bars went: the record claims nothing the
    data lacks; the erase done again finishes the job."""
    collect(store, ["AAPL"])
    before = store.read(*KEY)

    def crash(*_: object) -> int:
        raise OSError("crash")

    with monkeypatch.context() as m:
        if store.format == "parquet":  # it sorts out the bars to keep as Arrow columns, not with outside()
            m.setattr(type(store), "_erase_bars", crash)
        else:
            m.setattr(series, "outside", crash)
        with pytest.raises(OSError):
            store.erase(*KEY, *CUT)
    assert store.read(*KEY) == before  # the bars are all still there
    assert store.coverage(*KEY) == [(START, CUT[0]), (CUT[1], END)]
    assert store.erase(*KEY, *CUT) > 0
    assert store.read(*KEY) == [b for b in before if not CUT[0] <= b[0] < CUT[1]]


# --- kill -9 at every rename of an erase --------------------------------------------------------

KILLER = """
import os, signal, sys
n = int(sys.argv[1])
calls = [0]
def killing(real):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
import ktrdr_collect.jobs.queue as queue
queue.recover = lambda: None  # count the erase's own renames only
os.replace = killing(os.replace)
os.rename = killing(os.rename)
os.unlink = killing(os.unlink)
from ktrdr_collect.cli.main import app
app(sys.argv[2:], prog_name="collect")
"""


def run_erase(home: Path, kill_at: int, *args: str) -> int:
    env = {**os.environ, "KTRDR_COLLECT_HOME": str(home)}
    r = subprocess.run([sys.executable, "-c", KILLER, str(kill_at), "data", "erase", *args],
                       env=env, capture_output=True, text=True, timeout=60)
    return r.returncode


def claims_only_stored_bars(store: Store, key: tuple[str, str, str]) -> bool:
    """Every bar the calendar has inside a fetched range is stored."""
    have = {b[0] for b in store.read(*key)}
    return all(ts in have for lo, hi in store.coverage(*key) for ts in DEMO_CALENDAR.bar_times("1d", lo, hi))


@pytest.mark.parametrize("fmt", FORMATS)
def test_kill9_at_every_step_of_an_erase_then_collect_gives_the_same_series(tmp_path: Path, fmt: str) -> None:
    args = ["AAPL", "-p", "demo", "-t", "1d", "--start", "2023-03-01", "--end", "2023-04-03", "--yes",
            "--format", fmt]
    reference_home = tmp_path / "reference"
    ref = open_store(fmt, reference_home / "data")
    collect(ref, ["AAPL", "MSFT"], max_bars=20)
    assert run_erase(reference_home, 0, *args) == 0  # never killed
    collect(ref, ["AAPL", "MSFT"], max_bars=20)
    reference = tree_bytes(reference_home / "data")
    killed = 0
    for kill_at in range(1, 40):
        home = tmp_path / f"home{kill_at}"
        store = open_store(fmt, home / "data")
        collect(store, ["AAPL", "MSFT"], max_bars=20)
        msft = tree_bytes(home / "data")
        code = run_erase(home, kill_at, *args)
        if code == 0:
            break  # the erase finished before the kill_at-th call: every step was covered
        assert code == -9, code
        killed += 1
        assert claims_only_stored_bars(store, KEY), kill_at
        assert store.read("demo", "1d", "MSFT") == open_store(fmt, reference_home / "data").read("demo", "1d", "MSFT")
        assert {k: v for k, v in tree_bytes(home / "data").items() if "MSFT" in k} == \
            {k: v for k, v in msft.items() if "MSFT" in k}
        collect(store, ["AAPL", "MSFT"], max_bars=20)
        if fmt == "csv":
            assert tree_bytes(home / "data") == reference, kill_at
        else:  # part boundaries may differ after a crash; the bars and ranges may not
            assert snapshot(store, KEY) == snapshot(ref, KEY), kill_at
    assert killed >= 2
