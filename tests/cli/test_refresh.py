"""`start --refresh`: the window fetched again where it is stored, the bars there replaced."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ktrdr_collect.cli.main import app

runner = CliRunner()
WINDOW = ["--start", "2023-01-02", "--end", "2023-02-01", "-o", "latency_ms=0"]


def status() -> dict:  # type: ignore[type-arg]
    return json.loads(runner.invoke(app, ["status", "last", "--json"]).stdout)


def test_refresh_replaces_the_window_and_leaves_the_rest(home: Path) -> None:
    assert runner.invoke(app, ["start", "AAPL", "--start", "2022-12-01", "--end", "2023-03-01", "-o",
                               "latency_ms=0", "-q"]).exit_code == 0
    path = home / "data/demo/1d/AAPL.csv"
    original = path.read_text().splitlines()
    lines = list(original)
    jan = [i for i, line in enumerate(lines) if line.startswith("2023-01-1")]
    dec = next(i for i, line in enumerate(lines) if line.startswith("2022-12-15"))
    for i in jan:  # stored bars that went wrong inside the window...
        lines[i] = lines[i].rsplit(",", 1)[0] + ",1"
    lines[dec] = lines[dec].rsplit(",", 1)[0] + ",1"  # ...and one outside it
    lines.insert(jan[0], "2023-01-08T00:00:00Z,1,1,1,1,1")  # a Sunday bar the provider never had
    path.write_text("\n".join(lines) + "\n")
    assert runner.invoke(app, ["start", "AAPL", *WINDOW, "-q"]).exit_code == 0
    assert status()["requests"] == 0  # without --refresh: stored is stored
    r = runner.invoke(app, ["start", "AAPL", *WINDOW, "--refresh", "-q"])
    assert r.exit_code == 0
    st = status()
    assert st["requests"] == 1 and st["candles"] == len(jan) + 1  # changed, plus the one removed
    now = path.read_text().splitlines()
    expected = list(original)
    expected[dec] = lines[dec]  # outside the window: untouched
    assert now == expected
    again = runner.invoke(app, ["start", "AAPL", *WINDOW, "--refresh", "-q"])
    assert again.exit_code == 0 and status()["candles"] == 0 and path.read_text().splitlines() == expected
    planned = json.loads(runner.invoke(app, ["plan", "AAPL", *WINDOW, "--refresh", "--json"]).stdout)
    assert planned["requests"] == 1
    spec = json.loads((home / "jobs" / st["id"] / "job.json").read_text())
    assert spec["refresh"] is True


def test_copies_kept_by_a_restatement_go_with_retention(home: Path) -> None:
    import os
    import time

    kept = home / "data/demo/1d/.ktrdr"
    kept.mkdir(parents=True)
    old, new = kept / "AAPL.before-restatement-20240101T000000Z.csv", kept / "MSFT.before-restatement-x.csv"
    for path in (old, new):
        path.write_text("timestamp,open,high,low,close,volume\n")
    os.utime(old, (time.time() - 40 * 86400, time.time() - 40 * 86400))
    (kept / "IBM.before-restatement-y.csv").symlink_to(old)  # a link is never followed or removed
    assert runner.invoke(app, ["start", "AAPL", *WINDOW, "-q"]).exit_code == 0  # retention 30 days by default
    assert not old.exists() and new.exists() and (kept / "IBM.before-restatement-y.csv").is_symlink()
