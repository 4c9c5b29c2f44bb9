"""The CLI in-process (Typer's CliRunner); the job runner itself is a real subprocess."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ktrdr_collect.cli.main import app

runner = CliRunner()
WINDOW = ["--start", "2023-01-02", "--end", "2023-03-01", "-o", "latency_ms=0"]


def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), input=input)


def jobs(home: Path) -> list[Path]:
    folder = home / "jobs"
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


def test_start_plain_output_and_data(home: Path) -> None:
    r = run("start", "aapl", "MSFT", *WINDOW)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert "demo (synthetic data)" in lines[0]
    assert "AAPL: completed, 42 candles" in lines and "MSFT: completed, 42 candles" in lines
    assert lines[-2].startswith("Completed: job ")
    assert lines[-1] == f"Data: {home / 'data' / 'demo' / '1d'}"  # the summary ends with where the files are
    assert "\x1b" not in r.stdout  # no control characters when not a terminal
    data = (home / "data/demo/1d/AAPL.csv").read_text().splitlines()
    assert data[0] == "timestamp,open,high,low,close,volume" and len(data) == 43
    again = run("start", "AAPL", "MSFT", *WINDOW)
    assert again.exit_code == 0 and "data already up to date" in again.stdout


def test_start_json_events(home: Path) -> None:
    r = run("start", "A", "B", "C", *WINDOW, "--json")
    assert r.exit_code == 0
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["event"] == "progress" and events[-1]["event"] == "finished"
    assert sorted(e["symbol"] for e in events if e["event"] == "symbol") == ["A", "B", "C"]
    final = events[-1]
    assert final["status"] == "completed" and final["percent"] == 100 and final["candles"] == 126
    assert "control_offset" not in final


def test_quiet_prints_nothing_but_failures(home: Path) -> None:
    r = run("start", "OK1", "BAD", *WINDOW, "-o", "fail_symbols=BAD", "-q")
    assert r.exit_code == 3
    assert r.stdout == ""
    assert "BAD: failed: unknown symbol BAD" in r.stderr


def test_all_symbols_failing_fails_the_job(home: Path) -> None:
    r = run("start", "BAD", *WINDOW, "-o", "fail_symbols=BAD")
    assert r.exit_code == 4
    assert run("status", "last", "--json").stdout and json.loads(run("status", "last", "--json").stdout)[
        "status"] == "failed"


def test_detach_prints_only_the_id(home: Path) -> None:
    r = run("start", "A", *WINDOW, "--detach")
    assert r.exit_code == 0
    job_id = r.stdout.strip()
    assert r.stdout == job_id + "\n" and [p.name for p in jobs(home)] == [job_id]
    assert run("wait", job_id, "--timeout", "30").exit_code == 0
    r = run("start", "B", *WINDOW, "--detach", "--json")
    assert set(json.loads(r.stdout)) == {"id"}
    assert run("wait", "last", "--timeout", "30").exit_code == 0


def test_symbols_from_file_and_stdin(home: Path, tmp_path: Path) -> None:
    watchlist = tmp_path / "watch.txt"
    watchlist.write_text("# my list\nmsft\n\nAAPL  # apple\n")
    r = run("start", "IBM", "-f", str(watchlist), *WINDOW, "--json")
    assert r.exit_code == 0
    assert [s["symbol"] for s in json.loads(r.stdout.splitlines()[-1])["symbols"]] == ["IBM", "MSFT", "AAPL"]
    r = run("start", "-f", "-", *WINDOW, "-q", input="XOM\nCVX\n")
    assert r.exit_code == 0
    assert json.loads(run("status", "last", "--json").stdout)["symbols_total"] == 2


@pytest.mark.parametrize("args,code,message", [
    (["start", "../x"], 1, "Error: invalid symbol '../x'"),
    (["start", "A/../../etc"], 1, "Error: invalid symbol"),
    (["start", "A", "--start", "2024-02-01", "--end", "2024-01-01"], 1, "Error: end"),
    (["start", "A", "--start", "2024-01-01", "--days", "3"], 1, "Error: --start and --days"),
    (["start", "A", "--end", "someday"], 1, "Error: --end: cannot parse"),
    (["start", "A", "-t", "2h"], 1, "Error: unknown timeframe '2h'"),
    (["start", "A", "-p", "nope"], 1, "Error: unknown provider 'nope' (available: demo"),
    (["start", "A", "-o", "speed=9"], 1, "Error: unknown option 'speed' for provider demo"),
    (["start", "A", "-o", "max_bars=lots"], 1, "Error: option max_bars expects int"),
    (["start", "A", "-w", "0"], 1, "Error: --workers"),
    (["start", "A", "--format", "xls"], 1, "Error: unknown format 'xls'"),
    (["start"], 2, "Error: no symbols given"),
    (["start", "A", "--bogus"], 2, "Error: No such option: --bogus"),
    (["status", "nosuchjob"], 1, "Error: Job not found: nosuchjob"),
    (["show", "last"], 1, "Error: Job not found: last"),
    (["list", "--status", "weird"], 1, "Error: unknown status 'weird'"),
    (["list", "--since", "soon"], 1, "Error: WHEN: cannot parse"),
])
def test_bad_input_is_one_error_line_and_creates_nothing(home: Path, args: list[str], code: int,
                                                         message: str) -> None:
    r = run(*args)
    assert r.exit_code == code, r.output
    assert r.stderr.startswith(message), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert jobs(home) == [] and not (home / "data").exists()


def test_status_show_list_and_providers(home: Path) -> None:
    assert run("start", "OK1", "BAD", *WINDOW, "-o", "fail_symbols=BAD", "-q", "--name", "nightly").exit_code == 3
    st = json.loads(run("status", "last", "--json").stdout)
    assert st["name"] == "nightly" and st["symbols_failed"] == 1 and st["exit_code"] == 3
    text = run("status", st["id"][:10]).stdout
    assert f"Job {st['id']} (nightly): completed" in text and "demo (synthetic data)" in text
    show = run("show", "last").stdout
    assert "OK1" in show and "unknown symbol BAD" in show
    listing = json.loads(run("list", "--json").stdout)
    assert [j["id"] for j in listing] == [st["id"]] and "symbols" not in listing[0]
    assert json.loads(run("list", "--search", "nightly", "--json").stdout)[0]["id"] == st["id"]
    assert json.loads(run("list", "--symbol", "ok1", "--json").stdout)[0]["id"] == st["id"]
    assert json.loads(run("list", "--status", "failed", "--json").stdout) == []
    assert json.loads(run("status", "--json").stdout) == []  # nothing unfinished
    logs = run("logs", "last").stdout
    assert "OK1: completed" in logs and "BAD: failed" in logs
    provs = json.loads(run("providers", "--json").stdout)
    demo = next(p for p in provs if p["name"] == "demo")
    assert demo["network"] is False and demo["credentials"] is False and "1m" in demo["timeframes"]
    assert "SYNTHETIC" in demo["description"]


def test_ambiguous_prefix_and_broken_state_files(home: Path) -> None:
    assert run("config", "set", "retention_days", "0").exit_code == 0  # nothing indexes the jobs early
    for _ in range(2):
        assert run("start", "A", *WINDOW, "-q").exit_code == 0
    ids = [p.name for p in jobs(home)]
    common = ids[0][: next(i for i, (a, b) in enumerate(zip(*ids, strict=False)) if a != b)]
    if common:
        r = run("status", common)
        assert r.exit_code == 1 and "ambiguous" in r.stderr and ids[0] in r.stderr
    (home / "jobs" / ids[0] / "state.json").write_text("{not json")
    r = run("status", ids[0])
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: job {ids[0]}: state file is corrupt")
    newer = json.loads((home / "jobs" / ids[1] / "state.json").read_text())
    r = run("list", "--json")
    assert r.exit_code == 0 and [j["id"] for j in json.loads(r.stdout)] == [ids[1]]
    assert "corrupt" in r.stderr
    newer["schema"] = 99
    (home / "jobs" / ids[1] / "state.json").write_text(json.dumps(newer))
    r = run("show", ids[1])
    assert r.exit_code == 1 and "newer than this version" in r.stderr


def test_config_file_sets_defaults(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text('timeframe = "1w"\n[providers.demo]\nlatency_ms = 0\nmax_bars = 2\n')
    r = run("start", "A", "--start", "2023-01-02", "--end", "2023-02-01", "--json")
    assert r.exit_code == 0
    final = json.loads(r.stdout.splitlines()[-1])
    assert final["timeframe"] == "1w" and final["requests"] == 3 and final["candles"] == 5


def test_version_and_help() -> None:
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.startswith("collect (ktrdr-collect) ")
    assert run("--help").exit_code == 0
