"""`collect data list|path|verify|erase` and `config get|show data_dir`, in-process (CliRunner)
against real files; `start` runs its real runner subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ktrdr_collect.cli import cmd_data
from ktrdr_collect.cli.main import app
from ktrdr_collect.storage.calendar import DEMO_CALENDAR
from ktrdr_collect.storage.timeframes import parse_ts

runner = CliRunner()
WINDOW = ["--start", "2023-01-02", "--end", "2023-07-01", "-o", "latency_ms=0", "-o", "max_bars=20"]
CUT = ["--start", "2023-03-01", "--end", "2023-04-03"]
BARS = DEMO_CALENDAR.count("1d", parse_ts("2023-01-02"), parse_ts("2023-07-01"))  # 130 weekdays


def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), input=input)


def collect(*symbols: str, extra: tuple[str, ...] = ()) -> int:
    """`collect start` for the window; returns the job's request count (status --json)."""
    r = run("start", *symbols, *WINDOW, *extra, "-q")
    assert r.exit_code == 0, r.output
    status = run("status", "last", "--json")
    return int(json.loads(status.stdout)["requests"])


def files_of(home: Path) -> dict[str, bytes]:
    root = home / "data"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.csv"))}


def test_list_table_fits_80_columns_and_json_has_every_field(home: Path) -> None:
    collect("AAPL", "BTC/USDT", "A-VERY-LONG.SYM")
    r = run("data", "list")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "demo 1d (csv)"
    assert lines[1].split() == ["SYMBOL", "FIRST", "LAST", "ROWS", "SIZE", "RANGES", "HOLES"]
    assert max(map(len, lines[:-1])) <= 80, r.stdout  # the table (the last line names the data dir)
    aapl = next(line for line in lines if line.startswith("AAPL "))
    assert aapl.split()[:4] == ["AAPL", "2023-01-02", "2023-06-30", str(BARS)] and aapl.split()[-1] == "0"
    assert lines[-1] == f"3 series in {home / 'data'}"
    rows = json.loads(run("data", "list", "--json").stdout)
    assert [r["symbol"] for r in rows] == ["A-VERY-LONG.SYM", "AAPL", "BTC/USDT"]
    assert set(rows[0]) == {"provider", "timeframe", "symbol", "format", "path", "first", "last", "rows",
                            "size_bytes", "ranges", "holes"}
    assert rows[1]["rows"] == BARS
    assert rows[1]["ranges"] == [{"start": "2023-01-02T00:00:00Z", "end": "2023-07-01T00:00:00Z"}]
    assert rows[2]["path"] == str(home / "data" / "demo" / "1d" / "BTC_USDT.csv")
    assert rows[1]["holes"] == 0 and rows[1]["size_bytes"] == (home / "data/demo/1d/AAPL.csv").stat().st_size


def test_list_filters_and_errors(home: Path) -> None:
    r = run("data", "list")
    assert r.exit_code == 0 and r.stdout.startswith("No data stored in ")
    collect("AAPL")
    assert json.loads(run("data", "list", "aapl", "-p", "DEMO", "-t", "1d", "--json").stdout)[0]["symbol"] == "AAPL"
    assert run("data", "list", "-t", "1h").stdout.startswith("No data stored (1h) in ")
    for args, message in [
        (("MSFT",), "Error: no stored series for MSFT in "),
        (("-p", "nope"), "Error: unknown provider 'nope'"),
        (("-t", "2h"), "Error: unknown timeframe '2h'"),
        (("a b",), "Error: invalid symbol 'a b'"),
        (("--format", "xls"), "Error: unknown format 'xls'"),
    ]:
        bad = run("data", "list", *args)
        assert bad.exit_code == 1 and bad.stderr.startswith(message) and len(bad.stderr.splitlines()) == 1, args


def test_path(home: Path, tmp_path: Path) -> None:
    r = run("data", "path")
    assert (r.exit_code, r.stdout) == (0, f"{home / 'data'}\n")
    assert "default (<home>/data)" in r.stderr
    assert run("data", "path", "--data-dir", str(tmp_path / "x")).stdout == f"{tmp_path / 'x'}\n"
    assert run("data", "path", "-p", "demo", "-t", "1d").stdout == f"{home / 'data' / 'demo' / '1d'}\n"
    missing = run("data", "path", "AAPL")
    assert missing.exit_code == 1 and missing.stderr.startswith("Error: no stored series for AAPL")
    collect("AAPL")
    assert run("data", "path", "aapl").stdout == f"{home / 'data' / 'demo' / '1d' / 'AAPL.csv'}\n"


def test_config_data_dir_is_never_unset(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = run("config", "get", "data_dir")
    assert r.stdout == f"{home / 'data'}\n" and "default" in r.stderr
    shown = {row["key"]: row for row in json.loads(run("config", "show", "--json").stdout)}
    assert shown["data_dir"]["value"] == str(home / "data") and shown["data_dir"]["source"].startswith("default")
    assert "(unset)" not in next(line for line in run("config", "show").stdout.splitlines() if "data_dir" in line)
    assert run("config", "set", "data_dir", str(tmp_path / "c")).exit_code == 0
    r = run("config", "get", "data_dir")
    assert r.stdout == f"{tmp_path / 'c'}\n" and "config" in r.stderr
    monkeypatch.setenv("KTRDR_COLLECT_DATA_DIR", str(tmp_path / "e"))
    r = run("config", "get", "data_dir")
    assert r.stdout == f"{tmp_path / 'e'}\n" and "KTRDR_COLLECT_DATA_DIR" in r.stderr
    assert run("data", "path").stdout == f"{tmp_path / 'e'}\n"
    assert "flag (--data-dir)" in run("data", "path", "--data-dir", str(tmp_path / "f")).stderr


def test_verify_clean_then_a_finding(home: Path) -> None:
    collect("AAPL", "MSFT")
    r = run("data", "verify")
    assert (r.exit_code, r.stdout) == (0, "") and "2 series checked: no findings" in r.stderr
    path = home / "data/demo/1d/AAPL.csv"
    lines = path.read_text().splitlines(keepends=True)
    ts, o, h, low, c, v = lines[5].rstrip("\n").split(",")
    lines[5] = f"{ts},{o},{low},{h},{c},{v}\n"  # high and low swapped
    path.write_text("".join(lines))
    r = run("data", "verify")
    assert r.exit_code == 3
    assert r.stdout.splitlines() == [f"demo 1d AAPL  {ts}  ohlc: " + r.stdout.split("ohlc: ", 1)[1].rstrip("\n")]
    doc = json.loads(run("data", "verify", "--json").stdout)
    assert doc["series"] == 2 and [(f["symbol"], f["timestamp"], f["rule"]) for f in doc["findings"]] == \
        [("AAPL", ts, "ohlc")]
    assert run("data", "verify", "MSFT").exit_code == 0


def test_erase_dry_run_refusal_and_yes_then_start_refetches_exactly_the_range(home: Path) -> None:
    first = collect("AAPL", "MSFT")
    before = files_of(home)
    dry = run("data", "erase", "AAPL", "-p", "demo", "-t", "1d", *CUT, "--dry-run")
    assert dry.exit_code == 0 and dry.stdout.startswith("would erase demo 1d AAPL: 23 bars from 2023-03-01")
    assert files_of(home) == before
    refused = run("data", "erase", "AAPL", "-p", "demo", "-t", "1d", *CUT)  # CliRunner: not a terminal
    assert refused.exit_code == 1 and "pass --yes when not in a terminal" in refused.stderr
    assert files_of(home) == before
    r = run("data", "erase", "AAPL", "-p", "demo", "-t", "1d", *CUT, "--yes")
    assert r.exit_code == 0 and "Erased 23 bars in 1 series." in r.stdout
    after = files_of(home)
    assert after["demo/1d/MSFT.csv"] == before["demo/1d/MSFT.csv"]
    assert len(after["demo/1d/AAPL.csv"].splitlines()) == len(before["demo/1d/AAPL.csv"].splitlines()) - 23
    info = json.loads(run("data", "list", "AAPL", "--json").stdout)[0]
    assert [(r["start"], r["end"]) for r in info["ranges"]] == [
        ("2023-01-02T00:00:00Z", "2023-03-01T00:00:00Z"), ("2023-04-03T00:00:00Z", "2023-07-01T00:00:00Z")]
    requests = collect("AAPL", "MSFT")
    assert requests == len(DEMO_CALENDAR.split("1d", parse_ts("2023-03-01"), parse_ts("2023-04-03"), 20)) == 2
    assert first > requests
    assert files_of(home) == before


def test_erase_asks_in_a_terminal(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    collect("AAPL")
    before = files_of(home)
    monkeypatch.setattr(cmd_data, "interactive", lambda: True)
    no = run("data", "erase", "AAPL", "-p", "demo", "-t", "1d", input="n\n")
    assert no.exit_code == 1 and files_of(home) == before and "Nothing erased." in no.stderr
    yes = run("data", "erase", "AAPL", "-p", "demo", "-t", "1d", input="y\n")
    assert yes.exit_code == 0 and f"Erased {BARS} bars" in yes.stdout
    assert files_of(home) == {} and run("data", "list").stdout.startswith("No data stored")


def test_erase_errors(home: Path) -> None:
    collect("AAPL")
    for args, code, message in [
        (("MSFT", "-p", "demo", "-t", "1d", "--yes"), 1, "Error: no stored series for MSFT"),
        (("AAPL", "-p", "demo", "-t", "1h", "--yes"), 1, "Error: no stored series for AAPL (demo 1h)"),
        (("AAPL", "-p", "nope", "-t", "1d", "--yes"), 1, "Error: unknown provider 'nope'"),
        (("AAPL", "-p", "demo", "-t", "1d", "--start", "2023-05-01", "--end", "2023-04-01"), 1,
         "Error: --end must be after --start"),
        (("AAPL", "-p", "demo", "-t", "1d", "--start", "soon"), 1, "Error: --start: cannot parse date 'soon'"),
        (("AAPL", "-t", "1d"), 2, "Error: Missing option '-p'"),
    ]:
        r = run("data", "erase", *args)
        assert r.exit_code == code and r.stderr.startswith(message), (args, r.stderr)
    assert len(json.loads(run("data", "list", "--json").stdout)) == 1


def test_parquet_series_without_pyarrow_is_one_clear_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyarrow")
    collect("AAPL", extra=("--format", "parquet"))
    assert json.loads(run("data", "list", "--json").stdout)[0]["format"] == "parquet"
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)
    for command in ("list", "verify"):
        r = run("data", command)
        assert r.exit_code == 1 and "needs pyarrow" in r.stderr, r.stderr


def test_erase_in_each_format_or_one(home: Path) -> None:
    pytest.importorskip("pyarrow")
    collect("AAPL")
    collect("AAPL", extra=("--format", "parquet"))
    csv_before = files_of(home)
    r = run("data", "erase", "AAPL", "-p", "demo", "-t", "1d", *CUT, "--format", "parquet", "--yes")
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == \
        "erase demo 1d AAPL (parquet): 23 bars from 2023-03-01T00:00:00Z up to 2023-04-03T00:00:00Z"
    assert files_of(home) == csv_before
    listed = {(s["format"], s["rows"]) for s in json.loads(run("data", "list", "--json").stdout)}
    assert listed == {("csv", BARS), ("parquet", BARS - 23)}
    r = run("data", "erase", "AAPL", "-p", "demo", "-t", "1d", "--yes")
    assert r.exit_code == 0 and f"Erased {BARS + BARS - 23} bars in 2 series." in r.stdout
    assert run("data", "list").stdout.startswith("No data stored")
    assert run("data", "verify").exit_code == 0


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
queue.recover = lambda: None  # count the erase's own file operations only
os.replace, os.rename, os.unlink = killing(os.replace), killing(os.rename), killing(os.unlink)
from ktrdr_collect.cli.main import app
app(sys.argv[2:], prog_name="collect")
"""


def test_kill9_during_erase_then_start_gives_the_files_of_an_uninterrupted_run(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`collect data erase` killed with SIGKILL before each of its renames/unlinks (a real
    subprocess), then `collect start`: the files are those of an erase that was never killed."""
    import os
    import subprocess
    import sys

    erase = ["data", "erase", "AAPL", "-p", "demo", "-t", "1d", *CUT, "--yes"]
    collect("AAPL", "MSFT")
    original = files_of(home)
    assert run(*erase).exit_code == 0
    collect("AAPL", "MSFT")
    reference = files_of(home)
    assert reference == original
    killed = 0
    for kill_at in range(1, 20):
        other = tmp_path / f"home{kill_at}"
        monkeypatch.setenv("KTRDR_COLLECT_HOME", str(other))
        collect("AAPL", "MSFT")
        r = subprocess.run([sys.executable, "-c", KILLER, str(kill_at), *erase], capture_output=True, text=True,
                           env={**os.environ, "KTRDR_COLLECT_HOME": str(other)}, timeout=60)
        if r.returncode == 0:
            break
        assert r.returncode == -9, r.stderr
        killed += 1
        assert files_of(other)["demo/1d/MSFT.csv"] == original["demo/1d/MSFT.csv"]
        # consistent: no range is claimed whose bars are gone (no hole); at most bars the record
        # no longer claims (the record shrinks first), which the next start fetches and rewrites
        findings = json.loads(run("data", "verify", "--json").stdout)["findings"]
        assert {f["rule"] for f in findings} <= {"coverage"}, findings
        collect("AAPL", "MSFT")
        assert files_of(other) == reference, kill_at
    assert killed == 2  # the record's rename, then the data file's


def test_verify_reports_the_split_an_append_mixed_in_until_the_split_is_stored(home: Path) -> None:
    """Issue 11's scenario: NVDA stored at ~1000, then a split-adjusted history (~100) appended."""
    collect("NVDA")
    path = home / "data/demo/1d/NVDA.csv"
    header, *rows = path.read_text().splitlines()
    cut = len(rows) // 2
    scaled = []
    for i, row in enumerate(rows):
        ts, *values = row.split(",")
        factor = 10.0 if i < cut else 1.0  # the old rows at the old price scale
        scaled.append(",".join([ts, *(f"{float(v) * factor:g}" for v in values[:4]), values[4]]))
    path.write_text("\n".join([header, *scaled]) + "\n")
    r = run("data", "verify", "NVDA")
    split_day = rows[cut].split(",")[0]
    assert r.exit_code == 3 and r.stdout.startswith(f"demo 1d NVDA  {split_day}  scale: "), r.stdout
    assert "(about 10:1) with no stored split" in r.stdout and len(r.stdout.splitlines()) == 1
    (home / "data/demo/1d/NVDA.actions.csv").write_text(f"timestamp,type,value\n{split_day},split,10:1\n")
    assert run("data", "verify", "NVDA").exit_code == 0
    assert [s["symbol"] for s in json.loads(run("data", "list", "--json").stdout)] == ["NVDA"]  # not a series
