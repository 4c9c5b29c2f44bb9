"""The shell examples in examples/, run for real against the demo provider."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

COLLECT_BIN = str(Path(sys.executable).parent / "collect")
WINDOW = "-o latency_ms=5 --end 2024-01-01"


def run(script: str, *args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "KTRDR_COLLECT_HOME": str(home), "COLLECT": COLLECT_BIN, **env}
    return subprocess.run(["bash", str(REPO / "examples" / script), *args], env=full_env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_nightly_watchlist_is_silent_on_success_and_logs_failures(home: Path, tmp_path: Path) -> None:
    watchlist = tmp_path / "watchlist.txt"
    watchlist.write_text("# nightly\nAAPL\nmsft\n")
    log = tmp_path / "nightly.log"
    r = run("nightly_watchlist.sh", str(watchlist), str(log), home=home, COLLECT_ARGS=WINDOW)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "" and not log.exists()
    assert (home / "data/demo/1d/MSFT.csv").exists()

    watchlist.write_text("AAPL\nNOPE\n")
    r = run("nightly_watchlist.sh", str(watchlist), str(log), home=home,
            COLLECT_ARGS=WINDOW + " -o fail_symbols=NOPE")
    assert r.returncode == 3 and r.stdout == ""
    [line] = log.read_text().splitlines()
    assert "some symbols failed" in line and "NOPE: failed: unknown symbol NOPE" in line

    watchlist.write_text("../etc/passwd\n")
    r = run("nightly_watchlist.sh", str(watchlist), str(log), home=home, COLLECT_ARGS=WINDOW)
    assert r.returncode == 1 and "invalid symbol" in log.read_text().splitlines()[-1]


def test_parallel_jobs_waits_on_each_and_reports(home: Path) -> None:
    r = run("parallel_jobs.sh", "AAPL MSFT", "XOM CVX", "JPM", home=home, COLLECT_ARGS=WINDOW)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert sum(line.startswith("started ") for line in lines) == 3
    assert sum(": exit 0 (completed" in line for line in lines) == 3
    r = run("parallel_jobs.sh", "AAPL BAD", home=home, COLLECT_ARGS=WINDOW + " -o fail_symbols=BAD")
    assert r.returncode == 3 and "exit 3 (completed, 1/2 symbols" in r.stdout


def test_python_api_example(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(REPO / "examples" / "python_api.py"), str(tmp_path / "data")],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "AAPL: completed, 1043 candles, 2 requests, error=None" in lines
    assert "NOPE: failed, 0 candles, 0 requests, error=unknown symbol NOPE (demo fail_symbols)" in lines
    assert any(line.startswith("cancelled after ") for line in lines)
    assert "worker threads left: 0" in lines
    assert (tmp_path / "data/demo/1d/MSFT.csv").exists()
    assert "collect (demo)" in r.stderr  # the tqdm bar
