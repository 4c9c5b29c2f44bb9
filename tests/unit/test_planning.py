"""One plan for the CLI and the Python API: the same window, the same checks, before anything exists."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ktrdr_collect
from ktrdr_collect.cli.main import app
from ktrdr_collect.errors import InvalidInputError, UsageError
from ktrdr_collect.planning import plan_job

NOW = datetime(2024, 3, 15, 12, 30, tzinfo=UTC)


def test_days_for_daily_bars_start_at_midnight_of_the_nth_day(tmp_path: Path) -> None:
    plan = plan_job(["aapl"], "1d", None, None, 3, "demo", tmp_path, now=NOW)
    assert plan.symbols == ["AAPL"] and plan.start == datetime(2024, 3, 12, tzinfo=UTC) and plan.end == NOW
    weekly = plan_job(["AAPL"], "1w", None, None, 10, "DEMO", tmp_path, now=NOW)
    assert weekly.start == datetime(2024, 3, 4, tzinfo=UTC) and weekly.provider == "demo"  # that week's Monday
    hourly = plan_job(["AAPL"], "1h", None, None, 3, "demo", tmp_path, now=NOW)
    assert hourly.start == datetime(2024, 3, 12, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"symbols": []}, UsageError),
    ({"symbols": ["bad symbol!"]}, InvalidInputError),
    ({"timeframe": "2h"}, InvalidInputError),
    ({"workers": 0}, InvalidInputError),
    ({"fmt": "xls"}, InvalidInputError),
    ({"name": "  "}, InvalidInputError),
    ({"data_dir": Path("/proc/nope")}, InvalidInputError),
    ({"start": "2024-02-01", "end": "2024-01-01"}, InvalidInputError),
])
def test_everything_is_checked_before_anything_exists(tmp_path: Path, kwargs: dict, error: type) -> None:  # type: ignore[type-arg]
    args = {"symbols": ["AAPL"], "timeframe": "1d", "start": None, "end": None, "days": 5, "provider": "demo",
            "data_dir": tmp_path / "data", **kwargs}
    if "start" in kwargs:
        args["days"] = None
    with pytest.raises(error):
        plan_job(args.pop("symbols"), args.pop("timeframe"), args.pop("start"), args.pop("end"), args.pop("days"),
                 args.pop("provider"), args.pop("data_dir"), **args)


def test_an_unusable_data_dir_fails_before_the_job_is_made(home: Path) -> None:
    r = CliRunner().invoke(app, ["start", "AAPL", "--data-dir", "/proc/nope", "-q"])
    assert r.exit_code == 1 and r.stderr.startswith("Error: cannot use data folder /proc/nope")
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())
    with pytest.raises(InvalidInputError, match="cannot use data folder"):
        ktrdr_collect.collect(["AAPL"], data_dir="/proc/nope", progress=False)


def test_the_api_and_the_cli_collect_the_same_window(home: Path, tmp_path: Path) -> None:
    end = "2024-03-15T12:30:00"
    r = CliRunner().invoke(app, ["start", "AAPL", "--days", "10", "--end", end, "--data-dir", str(tmp_path / "cli"),
                                 "-o", "latency_ms=0", "-q"])
    assert r.exit_code == 0, r.output
    ktrdr_collect.collect(["AAPL"], "1d", end=end, days=10, data_dir=tmp_path / "api", options={"latency_ms": 0},
                          progress=False)
    cli = (tmp_path / "cli/demo/1d/AAPL.csv").read_bytes()
    assert cli == (tmp_path / "api/demo/1d/AAPL.csv").read_bytes()
    assert b"2024-03-05T00:00:00Z" in cli  # the 10th day's bar, stamped at 00:00Z, is in both


def test_executor_is_checked_before_the_job_and_recorded_in_its_spec(home: Path) -> None:
    import json

    runner = CliRunner()
    r = runner.invoke(app, ["start", "AAPL", "--executor", "nope", "-q"])
    assert r.exit_code == 1 and "executor must be threads or dask://HOST:PORT" in r.stderr
    assert not (home / "jobs").exists() or not any((home / "jobs").iterdir())
    r = runner.invoke(app, ["start", "AAPL", "--days", "5", "--executor", "threads", "-o", "latency_ms=0", "-q"])
    assert r.exit_code == 0
    job_id = json.loads(runner.invoke(app, ["status", "last", "--json"]).stdout)["id"]
    assert json.loads((home / "jobs" / job_id / "job.json").read_text())["executor"] == "threads"
