"""End to end: `collect start --format parquet --data-dir s3://...` against a local S3 server
(moto, tests/services.py); runners killed with SIGKILL at random moments, then resumed, store the
same bars as an uninterrupted run; `--format csv` on a URL is refused before any job exists."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from e2e_helpers import (
    LONG_WINDOW,
    collect,
    job_diagnostics,
    job_folders,
    poll_until,
    read_state,
    runner_gone,
    runner_pid,
    start_detached,
    status_json,
    wait_for_requests,
    wait_rc,
)

pytest.importorskip("pyarrow")
pytest.importorskip("s3fs")

from ktrdr_collect.storage.object_store import ObjectParquetStore  # noqa: E402
from ktrdr_collect.storage.parquet_store import ParquetStore  # noqa: E402

SYMBOLS = ["KA", "KB", "KC"]
OPTS = [*LONG_WINDOW, "-o", "max_bars=250", "-w", "2", "--format", "parquet"]


def test_csv_on_a_url_is_refused_before_any_job_exists(home: Path, s3_url: str) -> None:
    r = collect(home, "start", "AAPL", "-t", "1d", "--days", "5", "--format", "csv", "--data-dir", s3_url)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines() == [
        "Error: --format csv needs a local folder; use --format parquet for object storage (s3://...)"]
    assert job_folders(home) == []


def test_a_bucket_that_does_not_answer_is_refused(home: Path, s3_url: str) -> None:
    missing = s3_url.replace("s3://ktrdr-", "s3://missing-")
    r = collect(home, "start", "AAPL", "-t", "1d", "--days", "5", "--format", "parquet", "--data-dir", missing)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.startswith(f"Error: cannot use data folder {missing}: ") and r.stderr.count("\n") == 1
    assert job_folders(home) == []


def test_start_stores_in_the_bucket_what_it_stores_in_a_folder(home: Path, s3_url: str, tmp_path: Path) -> None:
    window = ["-t", "1h", "--start", "2023-01-02", "--end", "2023-02-01", "--format", "parquet", "-q"]
    r = collect(home, "start", "AAPL", "MSFT", *window, "--data-dir", s3_url)
    assert r.returncode == 0, (r.stderr, job_diagnostics(home))
    local = tmp_path / "local"
    r = collect(home, "start", "AAPL", "MSFT", *window, "--data-dir", str(local))
    assert r.returncode == 0, r.stderr
    remote, disk = ObjectParquetStore(s3_url), ParquetStore(local)
    for sym in ("AAPL", "MSFT"):
        assert remote.read("demo", "1h", sym) == disk.read("demo", "1h", sym) != []
        assert remote.coverage("demo", "1h", sym) == disk.coverage("demo", "1h", sym)
    r = collect(home, "start", "AAPL", "MSFT", *window, "--data-dir", s3_url)
    assert r.returncode == 0 and status_json(home, "last")["requests"] == 0  # coverage from the manifests


def kill_runner(home: Path, job_id: str) -> str:
    pid = runner_pid(home, job_id)
    os.kill(pid, signal.SIGKILL)
    poll_until(lambda: runner_gone(home, job_id, pid), 5, what="killed runner to be gone")
    return str(status_json(home, job_id)["status"])


def test_kill9_at_random_moments_then_resume_gives_the_same_bars(home: Path, s3_url: str) -> None:
    rng = random.Random(20261130)
    job_id = start_detached(home, *SYMBOLS, *OPTS, "--data-dir", s3_url, "-o", "latency_ms=20")
    kills = seen = 0
    try:
        for _ in range(4):
            seen = wait_for_requests(home, job_id, at_least=seen + 1, timeout=60)
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment, not synchronisation
            if read_state(home, job_id)["status"] not in ("running", "pending"):
                break
            if kill_runner(home, job_id) == "completed":
                break
            kills += 1
            seen = read_state(home, job_id)["requests"]
            r = collect(home, "resume", job_id)
            assert r.returncode == 0, r.stderr
        assert kills >= 2, "the job finished before it could be killed"
        assert wait_rc(home, job_id, timeout=120) == 0
    finally:
        if not runner_gone(home, job_id):
            collect(home, "cancel", job_id)
    reference = s3_url + "-reference"
    r = collect(home, "start", *SYMBOLS, *OPTS, "--data-dir", reference, "-o", "latency_ms=0", "-q", timeout=180)
    assert r.returncode == 0, (r.stderr, job_diagnostics(home))
    got, want = ObjectParquetStore(s3_url), ObjectParquetStore(reference)
    for sym in SYMBOLS:
        bars = got.read("demo", "1h", sym)
        assert bars == want.read("demo", "1h", sym) != [], sym
        assert len({b[0] for b in bars}) == len(bars) == got.row_count("demo", "1h", sym)  # nothing doubled
        assert got.coverage("demo", "1h", sym) == want.coverage("demo", "1h", sym)


def test_config_data_dir_may_be_a_bucket(home: Path, s3_url: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'data_dir = "{s3_url}"\nformat = "parquet"\n')
    r = collect(home, "start", "AAPL", "-t", "1d", "--start", "2023-01-02", "--end", "2023-02-01", "--format",
                "parquet", "-q")
    assert r.returncode == 0, (r.stderr, job_diagnostics(home))
    assert len(ObjectParquetStore(s3_url).read("demo", "1d", "AAPL")) == status_json(home, "last")["candles"] > 0
    assert not (home / "data").exists()


def test_two_jobs_on_the_same_series_at_once_store_each_bar_once(home: Path, s3_url: str, tmp_path: Path) -> None:
    """No claims on object storage: both jobs fetch everything and store it; the series end up
    with the bars of one job alone, none doubled. (Both jobs write every segment, so a lost update
    would be healed by the other job here: tests/storage/test_object_store.py's racing writers are
    the ones that need the conditional put.)"""
    window = ["-t", "1h", "--start", "2022-01-01", "--end", "2023-01-01", "-o", "max_bars=100", "-w", "2",
              "--format", "parquet"]
    first = start_detached(home, "KA", "KB", *window, "--data-dir", s3_url, "-o", "latency_ms=5")
    second = start_detached(home, "KB", "KA", *window, "--data-dir", s3_url, "-o", "latency_ms=5")
    assert wait_rc(home, first, timeout=120) == 0 and wait_rc(home, second, timeout=120) == 0
    local = tmp_path / "alone"
    r = collect(home, "start", "KA", "KB", *window, "--data-dir", str(local), "-o", "latency_ms=0", "-q", timeout=120)
    assert r.returncode == 0, r.stderr
    got, alone = ObjectParquetStore(s3_url), ParquetStore(local)
    for sym in ("KA", "KB"):
        assert got.read("demo", "1h", sym) == alone.read("demo", "1h", sym) != []
        assert got.row_count("demo", "1h", sym) == alone.row_count("demo", "1h", sym)
        assert got.coverage("demo", "1h", sym) == alone.coverage("demo", "1h", sym)


def test_plan_counts_against_the_manifests(home: Path, s3_url: str) -> None:
    window = ["AAPL", "-t", "1d", "--start", "2023-01-02", "--end", "2023-03-01", "--format", "parquet",
              "--data-dir", s3_url]
    before = collect(home, "plan", *window)
    assert before.returncode == 0 and "Total: 1 request" in before.stdout, before.stderr
    assert collect(home, "start", *window, "-q").returncode == 0
    after = collect(home, "plan", *window)
    assert after.returncode == 0 and "Total: 0 requests" in after.stdout, after.stdout
