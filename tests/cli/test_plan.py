"""`collect plan`: what start would do — its request counts are the ones the job then makes."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ktrdr_collect.cli.main import app

runner = CliRunner()
WINDOW = ["-t", "1h", "--start", "2023-01-02", "--end", "2023-03-01", "-o", "latency_ms=0", "-o", "max_bars=50"]


def plan(*args: str) -> dict:  # type: ignore[type-arg]
    r = runner.invoke(app, ["plan", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def requests_of_a_job(*args: str) -> int:
    assert runner.invoke(app, ["start", *args, "-q"]).exit_code == 0
    return int(json.loads(runner.invoke(app, ["status", "last", "--json"]).stdout)["requests"])


def test_plan_counts_the_requests_the_job_then_makes(home: Path) -> None:
    first = plan("AAPL", "MSFT", *WINDOW)
    assert [s["symbol"] for s in first["series"]] == ["AAPL", "MSFT"] and first["requests"] == 2 * 6  # 280 bars / 50
    assert first["series"][0]["missing"] == [["2023-01-02T00:00:00Z", "2023-03-01T00:00:00Z"]]
    assert requests_of_a_job("AAPL", "MSFT", *WINDOW) == first["requests"]
    assert plan("AAPL", "MSFT", *WINDOW)["requests"] == 0  # nothing missing now
    wider = [*WINDOW[:2], "--start", "2022-11-01", *WINDOW[4:]]
    before = plan("AAPL", "IBM", *wider)
    assert before["series"][0]["requests"] < before["series"][1]["requests"]  # AAPL has most of it stored
    assert requests_of_a_job("AAPL", "IBM", *wider) == before["requests"]


def test_plan_estimates_the_duration_under_pacing(home: Path) -> None:
    paced = plan("AAPL", *WINDOW[:-4], "-o", "latency_ms=100", "-o", "max_bars=50", "-o", "rate_limit=2")
    assert paced["requests"] == 6 and paced["rate_limit"] == 2.0
    assert paced["duration_s"] == 5 / 2 + 0.1  # five gaps of 0.5 s between six requests, then the last answer
    unpaced = plan("AAPL", "MSFT", *WINDOW[:-4], "-o", "latency_ms=100", "-o", "max_bars=50", "-w", "4")
    assert unpaced["duration_s"] == 0.3  # 12 requests on 4 workers: 3 rounds of 100 ms


def test_plan_checks_like_start_and_makes_no_job(home: Path) -> None:
    r = runner.invoke(app, ["plan", "../etc", *WINDOW])
    assert r.exit_code == 1 and r.stderr.startswith("Error: invalid symbol")
    text = runner.invoke(app, ["plan", "AAPL", *WINDOW]).stdout
    assert "AAPL" in text and "Total: 6 requests" in text
    assert not (home / "jobs").exists()
