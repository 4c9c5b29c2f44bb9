"""Papercuts a new user hits (issue 13, item 5), each pinned by a test; the CLI in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from ktrdr_collect.cli.main import app

runner = CliRunner()
WINDOW = ["--start", "2023-01-02", "--end", "2023-03-01", "-o", "latency_ms=0"]


def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), input=input)


def test_detach_quiet_still_prints_the_job_id(home: Path) -> None:
    r = run("start", "AAPL", *WINDOW, "-d", "-q")
    assert r.exit_code == 0
    job_id = r.stdout.strip()
    assert job_id and "\n" not in job_id and (home / "jobs" / job_id).is_dir()
    assert run("wait", job_id, "--timeout", "30", "-q").exit_code == 0
    r = run("start", "MSFT", *WINDOW, "-d", "-q", "--json")
    assert json.loads(r.stdout)["id"]
    assert run("wait", "last", "--timeout", "30", "-q").exit_code == 0


def test_wait_prints_the_final_summary(home: Path) -> None:
    job_id = run("start", "AAPL", "BAD", *WINDOW, "-o", "fail_symbols=BAD", "-d").stdout.strip()
    r = run("wait", job_id, "--timeout", "30")
    assert r.exit_code == 3
    assert r.stdout.splitlines() == [r.stdout.strip()]
    assert r.stdout.startswith(f"Completed with failures: job {job_id} · 1/2 symbols, 1 failed")
    again = run("wait", job_id, "-q")
    assert again.exit_code == 3 and again.stdout == ""


def test_wait_says_so_on_timeout(home: Path) -> None:
    job_id = run("start", "SLOW", *WINDOW, "-o", "latency_ms=400", "-o", "max_bars=5", "-d").stdout.strip()
    try:
        r = run("wait", job_id, "--timeout", "0.2")
        assert r.exit_code == 124
        assert r.stdout == ""
        assert f"Job {job_id} still " in r.stderr and "after 0.2 s" in r.stderr
    finally:
        run("cancel", job_id)
        run("wait", job_id, "--timeout", "30")


def first_bar(home: Path, timeframe: str, symbol: str = "AAPL") -> str:
    return (home / f"data/demo/{timeframe}/{symbol}.csv").read_text().splitlines()[1].split(",")[0]


def test_days_includes_the_nth_days_daily_bar(home: Path) -> None:
    # end Thursday 2023-03-02 12:00: nine days back is Tuesday 2023-02-21, whose bar opens at 00:00Z
    r = run("start", "AAPL", "--end", "2023-03-02T12:00", "--days", "9", "-o", "latency_ms=0", "-q")
    assert r.exit_code == 0, r.output
    assert first_bar(home, "1d") == "2023-02-21T00:00:00Z"
    assert json.loads(run("status", "last", "--json").stdout)["start"].startswith("2023-02-21T00:00:00")


def test_days_includes_the_week_of_the_nth_day(home: Path) -> None:
    # 30 days before Thursday 2023-03-02 12:00 is Tuesday 2023-01-31: its week's bar is Monday 01-30
    r = run("start", "AAPL", "-t", "1w", "--end", "2023-03-02T12:00", "--days", "30", "-o", "latency_ms=0", "-q")
    assert r.exit_code == 0, r.output
    assert first_bar(home, "1w") == "2023-01-30T00:00:00Z"


def test_days_leaves_intraday_windows_alone(home: Path) -> None:
    r = run("start", "AAPL", "-t", "1h", "--end", "2023-03-02T18:00", "--days", "1", "-o", "latency_ms=0", "-q")
    assert r.exit_code == 0, r.output
    assert first_bar(home, "1h") == "2023-03-01T18:30:00Z"


def test_symbol_files_take_commas_and_spaces(home: Path, tmp_path: Path) -> None:
    watchlist = tmp_path / "watchlist.txt"
    watchlist.write_text("# tech\nAAPL, MSFT\nxom cvx,,  IBM  # energy and more\n\n")
    r = run("start", "-f", str(watchlist), *WINDOW, "-q")
    assert r.exit_code == 0, r.output
    status = json.loads(run("status", "last", "--json").stdout)
    assert [s["symbol"] for s in status["symbols"]] == ["AAPL", "MSFT", "XOM", "CVX", "IBM"]
    r = run("start", "-f", "-", *WINDOW, "-q", input="A,B\nC D\n")
    assert r.exit_code == 0 and json.loads(run("status", "last", "--json").stdout)["symbols_total"] == 4


def test_symbol_file_errors_name_the_file_and_line(home: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    Path("watchlist.txt").write_text("AAPL\n# comment\nMSFT, BAD!\n")
    r = run("start", "-f", "watchlist.txt", *WINDOW, "-q")
    assert r.exit_code == 1
    assert r.stderr.strip() == "Error: watchlist.txt line 3: invalid symbol 'BAD!'"
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())
    r = run("start", "-f", "-", *WINDOW, "-q", input="A\n../etc\n")
    assert r.exit_code == 1 and r.stderr.strip() == "Error: stdin line 2: invalid symbol '../etc'"


def test_format_help_shows_the_parquet_extra_literally() -> None:
    from ktrdr_collect.cli.docgen import help_text

    assert "needs the [parquet] extra" in help_text(["start"])
    assert "needs the [parquet] extra" in (Path(__file__).parents[2] / "docs" / "cli.md").read_text()


def test_providers_says_when_an_extra_is_missing(home: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ktrdr_collect.providers import registry

    monkeypatch.setattr(registry, "EXTRA_MODULES", {"ib": ("no_such_library_xyz",), "yahoo": ("json",)})
    r = run("providers")
    assert r.exit_code == 0
    assert "ib: needs pip install 'ktrdr-collect[ib]'" in r.stdout.splitlines()
    assert "yahoo: needs" not in r.stdout
    rows = {p["name"]: p for p in json.loads(run("providers", "--json").stdout)}
    assert rows["ib"]["install"] == "pip install 'ktrdr-collect[ib]'"
    assert rows["yahoo"]["install"] is None and rows["demo"]["install"] is None


def test_list_provider_is_case_insensitive_like_p(home: Path) -> None:
    assert run("start", "AAPL", *WINDOW, "-p", "DEMO", "-q").exit_code == 0
    assert json.loads(run("status", "last", "--json").stdout)["provider"] == "demo"
    assert (home / "data/demo/1d/AAPL.csv").exists()
    rows = json.loads(run("list", "--provider", "Demo", "--json").stdout)
    assert len(rows) == 1 and rows[0]["provider"] == "demo"
    assert "demo" in run("list", "--provider", "DEMO").stdout


def test_human_summaries_use_singulars_and_label_utc(home: Path) -> None:
    # 2023-01-06 is a Friday: one daily bar, one request
    r = run("start", "AAPL", "--start", "2023-01-06", "--end", "2023-01-07", "-o", "latency_ms=0")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].endswith("· 1 symbol")
    assert "AAPL: completed, 1 candle" in lines
    assert "· 1/1 symbol · 1 candle · 1 request ·" in lines[-2]
    status = run("status", "last").stdout
    assert "1 candle · 1 request · 0 errors" in status
    assert re.search(r"created    \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", status)
    assert "UTC" in run("list").stdout.splitlines()[0]
    assert "UTC" in run("stats", "--since", "7d").stdout.splitlines()[0]


def test_list_fits_80_columns(home: Path) -> None:
    assert run("start", "AAPL", "MSFT", *WINDOW, "-q", "--name", "nightly").exit_code == 0
    assert run("start", "AAPL", *WINDOW, "-t", "1h", "-q").exit_code == 0
    assert run("start", "BAD", *WINDOW, "-o", "fail_symbols=BAD", "-q").exit_code == 4
    lines = run("list").stdout.splitlines()
    assert len(lines) == 4
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    assert "…" not in "".join(lines)
    for line in lines[1:]:
        assert re.search(r"  \d\d-\d\d \d\d:\d\d  ", line)  # the date and time together, one column
    assert {line.split()[1] for line in lines[1:]} == {"completed", "failed"}
    ids = [r["id"] for r in json.loads(run("list", "--json").stdout)]
    assert [line.split()[0] for line in lines[1:]] == ids


def test_list_never_cuts_an_id_or_status(capsys) -> None:  # type: ignore[no-untyped-def]
    from ktrdr_collect.cli.tables import SAMPLE_ROWS, print_stream_table

    data = [["a1", "completed", "x"]] * SAMPLE_ROWS + [["a-much-longer-id", "interrupted", "y"]]
    print_stream_table(["ID", "STATUS", "NAME"], iter(data), uncut=("ID", "STATUS"))
    assert capsys.readouterr().out.splitlines()[-1] == "a-much-longer-id  interrupted  y"


def test_a_failed_symbol_is_logged_once(home: Path) -> None:
    assert run("start", "OK1", "BAD", *WINDOW, "-o", "fail_symbols=BAD", "-q").exit_code == 3
    log = run("logs", "last").stdout
    assert log.count("BAD: failed: unknown symbol BAD") == 1, log
