"""Issue 11's split scenario end to end: `collect start` (its real runner subprocess) against a
Yahoo-format server, which switches to split-adjusted history with a 10:1 split between two runs;
then `collect data verify`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ktrdr_collect.cli.main import app
from ktrdr_collect.storage.timeframes import parse_ts
from tests.providers.fake_apis import Running
from tests.providers.fake_yahoo import Listing, YahooMarket, serve_market

runner = CliRunner()
FIRST = ["--start", "2024-01-02", "--end", "2024-06-08"]
SECOND = ["--start", "2024-01-02", "--end", "2024-07-01"]
NYSE_HOLIDAYS = frozenset(date(2024, m, d) for m, d in ((1, 1), (1, 15), (2, 19), (3, 29), (5, 27), (6, 19), (7, 4)))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(parse_ts("2024-06-08T12:00:00Z"))


@pytest.fixture
def yahoo(clock: Clock) -> Iterator[Running]:
    split = {date(2024, 6, 10): 10.0}
    listings = [Listing("NVDA", "America/New_York", price_scale=10.0, splits=split, holidays=NYSE_HOLIDAYS),
                Listing("QUIET", "America/New_York", price_scale=10.0, splits=split, events=False,
                        holidays=NYSE_HOLIDAYS)]
    yield from serve_market(YahooMarket({x.symbol: x for x in listings}, clock))


def start(api: Running, symbol: str, window: list[str]):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["start", symbol, "-p", "yahoo", *window, "-o", f"base_url={api.url}",
                               "-o", "rate_limit=0", "-o", "client=stdlib"])


def closes(path: Path) -> list[float]:
    return [float(line.split(",")[4]) for line in path.read_text().splitlines()[1:]]


def test_a_split_between_two_runs_is_restated_and_verify_is_clean(home: Path, yahoo: Running,
                                                                    clock: Clock) -> None:
    first = start(yahoo, "NVDA", FIRST)
    assert first.exit_code == 0, first.output
    path = home / "data/yahoo/1d/NVDA.csv"
    old = closes(path)
    clock.now = parse_ts("2024-07-02T12:00:00Z")  # the split happened: Yahoo serves adjusted history
    second = start(yahoo, "NVDA", SECOND)
    assert second.exit_code == 0, second.output
    line = f"NVDA: restated {len(old)} bars after a 10:1 split on 2024-06-10"
    assert "NVDA: completed" in second.output
    job = json.loads(runner.invoke(app, ["status", "last", "--json"]).stdout)["id"]
    assert line in runner.invoke(app, ["logs", job]).stdout  # the job's log
    assert line in second.output.splitlines()  # and the summary of `start`
    now = closes(path)
    assert max(now) * 5 < min(old) and max(now) < 2 * min(now)  # one price scale, the new one
    assert [c * 10 for c in now[:len(old)]] == pytest.approx(old)
    assert (home / "data/yahoo/1d/NVDA.actions.csv").read_text() == (
        "timestamp,type,value\n2024-06-10T00:00:00Z,split,10\n")
    assert len(list((home / "data/yahoo/1d/.ktrdr").glob("NVDA.before-restatement-*.csv"))) == 1
    verify = runner.invoke(app, ["data", "verify", "NVDA"])
    assert verify.exit_code == 0, verify.output


def test_without_the_event_the_scale_break_stays_and_verify_reports_it(home: Path, yahoo: Running,
                                                                       clock: Clock) -> None:
    assert start(yahoo, "QUIET", FIRST).exit_code == 0
    clock.now = parse_ts("2024-07-02T12:00:00Z")
    second = start(yahoo, "QUIET", SECOND)
    assert second.exit_code == 0 and "restated" not in second.output
    verify = runner.invoke(app, ["data", "verify", "QUIET"])
    assert verify.exit_code == 3
    assert verify.stdout.startswith("yahoo 1d QUIET  2024-06-10T00:00:00Z  scale: ")
    assert "(about 10:1) with no stored split" in verify.stdout


def test_adjust_none_is_refused_before_any_job(home: Path) -> None:
    r = runner.invoke(app, ["start", "NVDA", "-p", "yahoo", "-o", "adjust=none"])
    assert r.exit_code == 1
    assert r.output.startswith("Error: provider yahoo: adjust=none is not available: ")
    assert not (home / "jobs").exists() or not any(p.is_dir() for p in (home / "jobs").iterdir())


KILLER = """
import os, signal, sys
n, url, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
calls = [0]
def killing(real):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.engine.pipeline import RetryPolicy
from ktrdr_collect.providers.yahoo import YahooProvider
from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.timeframes import parse_ts
os.replace, os.rename, os.unlink = killing(os.replace), killing(os.rename), killing(os.unlink)
provider = YahooProvider({"base_url": url, "rate_limit": 0, "timeout_s": 5, "client": "stdlib"})
engine = ProcessingEngine(provider, CsvStore(root), workers=1, retry=RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002))
[result] = engine.process_batch(["NVDA"], "1d", parse_ts("2024-01-02"), parse_ts("2024-07-01"))
sys.exit(0 if result.status == "completed" else 1)
"""


def test_kill9_anywhere_in_a_restating_run_then_a_run_gives_the_files_of_an_uninterrupted_one(
        tmp_path: Path, yahoo: Running, clock: Clock) -> None:
    """The second run (which restates) killed with SIGKILL before each of its renames and unlinks
    (a real subprocess): the file is never on two price scales, and one more run leaves the data
    and actions files byte-identical to an uninterrupted run's."""
    import shutil
    import subprocess
    import sys

    from ktrdr_collect.engine.engine import ProcessingEngine
    from ktrdr_collect.engine.pipeline import RetryPolicy
    from ktrdr_collect.providers.yahoo import YahooProvider
    from ktrdr_collect.storage.csv_store import CsvStore
    from ktrdr_collect.storage.inventory import SeriesKey
    from ktrdr_collect.storage.verify import scale_findings, stored_splits

    def collect(root: Path) -> None:
        provider = YahooProvider({"base_url": yahoo.url, "rate_limit": 0, "timeout_s": 5, "client": "stdlib"})
        engine = ProcessingEngine(provider, CsvStore(root), workers=1,
                                  retry=RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002))
        [result] = engine.process_batch(["NVDA"], "1d", parse_ts(FIRST[1]), parse_ts(SECOND[3]))
        assert result.status == "completed", result.error

    def outcome(root: Path) -> tuple[bytes, bytes, list[tuple[int, int]]]:
        folder = root / "yahoo/1d"
        return ((folder / "NVDA.csv").read_bytes(), (folder / "NVDA.actions.csv").read_bytes(),
                CsvStore(root).coverage("yahoo", "1d", "NVDA"))

    base = tmp_path / "base"
    engine = ProcessingEngine(
        YahooProvider({"base_url": yahoo.url, "rate_limit": 0, "timeout_s": 5, "client": "stdlib"}),
        CsvStore(base), workers=1, retry=RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002))
    [first] = engine.process_batch(["NVDA"], "1d", parse_ts(FIRST[1]), parse_ts(FIRST[3]))
    assert first.status == "completed"
    clock.now = parse_ts("2024-07-02T12:00:00Z")
    reference = tmp_path / "reference"
    shutil.copytree(base, reference)
    collect(reference)
    expected = outcome(reference)
    killed = 0
    for kill_at in range(1, 60):
        work = tmp_path / f"kill{kill_at}"
        shutil.copytree(base, work)
        r = subprocess.run([sys.executable, "-c", KILLER, str(kill_at), yahoo.url, str(work)],
                           capture_output=True, text=True, timeout=120)
        if r.returncode == 0:
            break
        assert r.returncode == -9, r.stderr
        killed += 1
        store = CsvStore(work)
        bars = store.read("yahoo", "1d", "NVDA")
        splits = stored_splits(work / "yahoo/1d/NVDA.csv")
        assert not list(scale_findings(SeriesKey("yahoo", "1d", "NVDA", "csv"), bars, splits)), kill_at
        collect(work)
        assert outcome(work) == expected, kill_at
        shutil.rmtree(work)
    assert killed >= 5, killed  # the kept copy, the record emptied, the data file, the record, the actions file
