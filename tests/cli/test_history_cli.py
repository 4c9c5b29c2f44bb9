"""list filters, stats, prune, config — in-process, against real job folders."""

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from ktrdr_collect.cli.main import app

runner = CliRunner()
WINDOW = ["--start", "2023-01-02", "--end", "2023-02-01", "-o", "latency_ms=0", "-q"]


def run(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


def make_jobs(home: Path) -> dict[str, str]:
    """Three finished jobs; auto-pruning is off so tests may age them before anything indexes them."""
    assert run("config", "set", "retention_days", "0").exit_code == 0
    ids = {}
    assert run("start", "AAPL", "MSFT", *WINDOW, "--name", "tech 50%").exit_code == 0
    ids["tech"] = json.loads(run("status", "last", "--json").stdout)["id"]
    assert run("start", "XOM.L", "BAD", *WINDOW, "-o", "fail_symbols=BAD").exit_code == 3
    ids["energy"] = json.loads(run("status", "last", "--json").stdout)["id"]
    assert run("start", "BAD", *WINDOW, "-o", "fail_symbols=BAD", "-p", "demo").exit_code == 4
    ids["bad"] = json.loads(run("status", "last", "--json").stdout)["id"]
    return ids


def listed(*args: str) -> list[str]:
    r = run("list", "--json", *args)
    assert r.exit_code == 0, r.output
    return [j["id"] for j in json.loads(r.stdout)]


def test_list_filters_combine(home: Path) -> None:
    ids = make_jobs(home)
    assert listed() == [ids["bad"], ids["energy"], ids["tech"]]
    assert listed("--status", "failed") == [ids["bad"]]
    assert listed("--status", "failed", "--status", "completed") == [ids["bad"], ids["energy"], ids["tech"]]
    assert listed("--symbol", "msft") == [ids["tech"]]
    assert listed("--symbol", "BAD", "--status", "completed") == [ids["energy"]]
    # search terms hold a character no job id can (ids are [0-9a-z-]), so a random id never matches
    assert listed("--search", "H 5") == [ids["tech"]]
    assert listed("--search", "m.l") == [ids["energy"]]
    assert listed("--search", "%") == [ids["tech"]]  # literal, not a LIKE wildcard
    assert listed("--search", "_") == []
    assert listed("--provider", "demo", "--limit", "2") == [ids["bad"], ids["energy"]]
    assert listed("--provider", "binance") == []
    assert listed("--since", "1h") == listed()
    assert listed("--until", "2000-01-01") == []
    text = run("list").stdout
    assert "tech" in text and ids["energy"] in text


def test_index_rebuilds_when_corrupt_and_forgets_deleted_jobs(home: Path) -> None:
    ids = make_jobs(home)
    assert len(listed()) == 3
    index = home / "jobs" / "index.sqlite"
    assert index.exists()
    index.write_bytes(b"this is not a database" * 100)
    assert len(listed()) == 3
    count = sqlite3.connect(index).execute("select count(*) from jobs").fetchone()[0]
    assert count == 3
    import shutil

    shutil.rmtree(home / "jobs" / ids["tech"])
    assert listed() == [ids["bad"], ids["energy"]]


def test_stats(home: Path) -> None:
    make_jobs(home)
    r = run("stats", "--json")
    assert r.exit_code == 0
    st = json.loads(r.stdout)
    assert st["jobs"] == 3 and st["by_status"] == {"completed": 2, "failed": 1}
    assert st["success_rate"] == round(1 / 3, 4)
    assert st["symbols_completed"] == 3 and st["symbols_failed"] == 2 and st["candles"] == 3 * 22
    assert st["top_errors"][0] == {"error": "unknown symbol BAD (demo fail_symbols)", "count": 2}
    assert st["providers"]["demo"]["jobs"] == 3
    assert st["duration_median_s"] is not None and st["duration_mean_s"] is not None
    assert json.loads(run("stats", "--since", "2999-01-01", "--json").stdout)["jobs"] == 0
    text = run("stats").stdout
    assert "Success rate 33.3%" in text and "unknown symbol BAD" in text


def age_job(home: Path, job_id: str, days: float) -> None:
    path = home / "jobs" / job_id / "state.json"
    state = json.loads(path.read_text())
    old = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    state["created_at"] = state["completed_at"] = old
    path.write_text(json.dumps(state))


def test_prune_deletes_only_old_finished_jobs(home: Path) -> None:
    ids = make_jobs(home)
    age_job(home, ids["tech"], 40)
    age_job(home, ids["energy"], 10)
    r = run("prune", "--dry-run")
    assert r.exit_code == 1 and "retention_days is 0" in r.stderr
    assert run("config", "unset", "retention_days").exit_code == 0  # back to the default, 30 days
    r = run("prune", "--dry-run", "--json")
    assert json.loads(r.stdout) == {"dry_run": True, "pruned": [ids["tech"]]}
    assert (home / "jobs" / ids["tech"]).exists()
    r = run("prune", "--older-than", "7d", "--json")
    assert sorted(json.loads(r.stdout)["pruned"]) == sorted([ids["tech"], ids["energy"]])
    assert listed() == [ids["bad"]]
    assert not (home / "jobs" / ids["tech"]).exists()
    assert run("prune", "--older-than", "soon").exit_code == 1


def test_start_prunes_past_retention_automatically(home: Path) -> None:
    ids = make_jobs(home)
    age_job(home, ids["tech"], 31)
    assert run("config", "unset", "retention_days").exit_code == 0
    assert run("start", "IBM", *WINDOW).exit_code == 0
    assert ids["tech"] not in listed() and len(listed()) == 3


def test_interrupted_and_running_jobs_are_never_pruned(home: Path) -> None:
    ids = make_jobs(home)
    path = home / "jobs" / ids["tech"] / "state.json"
    state = json.loads(path.read_text())
    state["status"] = "running"  # its runner is gone: reads as interrupted
    path.write_text(json.dumps(state))
    age_job(home, ids["tech"], 400)
    run("prune", "--older-than", "1d")
    assert (home / "jobs" / ids["tech"]).exists()
    assert json.loads(run("status", ids["tech"], "--json").stdout)["status"] == "interrupted"
    assert [s["id"] for s in json.loads(run("status", "--json").stdout)] == [ids["tech"]]


def test_config_commands(home: Path) -> None:
    assert run("config", "path").stdout.strip() == str(home / "config.toml")
    assert run("config", "set", "workers", "8").exit_code == 0
    assert run("config", "get", "workers").stdout.strip() == "8"
    r = run("config", "set", "workers", "many")
    assert r.exit_code == 1 and r.stderr.startswith("Error: config set: workers expects a whole number")
    assert run("config", "set", "timeframe", "2h").exit_code == 1
    assert run("config", "set", "nosuch", "1").exit_code == 1
    assert run("config", "set", "providers.demo.latency_ms", "0").exit_code == 0
    assert run("config", "set", "providers.demo.speed", "0").exit_code == 1
    assert run("config", "set", "providers.nope.x", "0").exit_code == 1
    rows = {r["key"]: r for r in json.loads(run("config", "show", "--json").stdout)}
    assert rows["workers"]["value"] == 8 and rows["workers"]["source"].startswith("config")
    assert rows["timeframe"]["source"] == "default"
    assert rows["providers.demo.latency_ms"]["value"] == 0.0
    assert (home / "config.toml").stat().st_mode & 0o777 == 0o600
    assert run("config", "unset", "workers").exit_code == 0
    assert run("config", "get", "workers").stdout.strip() == "4"


def test_environment_overrides_config(home: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    run("config", "set", "timeframe", "1w")
    monkeypatch.setenv("KTRDR_COLLECT_TIMEFRAME", "1h")
    rows = {r["key"]: r for r in json.loads(run("config", "show", "--json").stdout)}
    assert rows["timeframe"] == {"key": "timeframe", "value": "1h",
                                 "source": "environment (KTRDR_COLLECT_TIMEFRAME)"}
    monkeypatch.setenv("KTRDR_COLLECT_WORKERS", "zero")
    r = run("start", "A", *WINDOW)
    assert r.exit_code == 1 and "KTRDR_COLLECT_WORKERS" in r.stderr


def test_corrupt_config_is_a_clear_error(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "config.toml").write_text("workers = [unclosed")
    r = run("start", "A", *WINDOW)
    assert r.exit_code == 1 and r.stderr.startswith("Error: config") and "not valid TOML" in r.stderr
