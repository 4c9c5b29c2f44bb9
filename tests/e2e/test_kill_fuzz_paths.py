"""kill -9 fuzz over issue 12's new paths: a backfill (a series extended backwards, written in
batches that each rewrite the file), two cooperating jobs (claims) backfilling the same symbols, and
binance source=auto|archive extending a series backwards from a local archive server. Real `collect`
runners are killed with SIGKILL at random moments and resumed until they complete; the files must
then be byte-identical to one uninterrupted forward fill.

The randomness is seeded: each test prints its seed, and KTRDR_FUZZ_SEED=<seed> replays its choices
(the moments still depend on the machine's timing). A backfill batch holds PREPEND_BATCH_BARS =
100,000 bars, more than these small series have, so the runners here use a smaller batch
(KTRDR_TEST_PREPEND_BATCH_BARS, set through a sitecustomize on PYTHONPATH) and each job rewrites its
files several times while it may be killed; the `slow` variant runs 1m bars with the real batch."""

from __future__ import annotations

import fcntl
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_helpers import (
    COLLECT,
    check_csv,
    collect,
    csv_bytes,
    env_for,
    extra_home,
    job_diagnostics,
    poll_until,
    read_state,
    runner_gone,
    runner_pid,
    start_detached,
    status_json,
    wait_rc,
)

from tests.providers.browser_fakes import KeepAliveRunning, serve_keep_alive
from tests.providers.fake_apis import Handler, Request
from tests.providers.fake_binance_archive import FakeArchive, exchange_route

SEED_ENV = "KTRDR_FUZZ_SEED"
BATCH_ENV = "KTRDR_TEST_PREPEND_BATCH_BARS"
BATCH_SITE = f"""
import os
if os.environ.get({BATCH_ENV!r}):
    from ktrdr_collect.engine import pipeline

    pipeline.PREPEND_BATCH_BARS = int(os.environ[{BATCH_ENV!r}])
"""
SYMBOLS = ["BA", "BB"]
DEMO = ["-t", "1h", "-o", "max_bars=250"]
RECENT = ["--start", "2022-01-01", "--end", "2023-01-01"]  # ~1,820 1h bars a symbol, stored first
BACK = ["--start", "2016-01-01", "--end", "2023-01-01"]  # ~12,700: the backfill adds ~44 requests a symbol
INSIDE = ["--start", "2018-01-01", "--end", "2021-01-01"]  # a second job's window, inside the backfill's
LATENCY_S = 0.03
"""Each answer of the fake exchange waits this long, as a real one would (not synchronisation)."""


def seeded(name: str) -> tuple[random.Random, int]:
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"{name}: seed {seed} (replay: {SEED_ENV}={seed})")
    return random.Random(seed), seed


@pytest.fixture
def small_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Set the batch size of every `collect` process this test starts."""
    site = tmp_path / "batch-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BATCH_SITE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return lambda bars: monkeypatch.setenv(BATCH_ENV, str(bars))


def demo_dir(home: Path, tf: str = "1h") -> Path:
    return home / "data" / "demo" / tf


def sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.glob("*.csv")}


def reference(tmp_path: Path, *args: str) -> dict[str, bytes]:
    """The files of one uninterrupted forward fill (`collect start ARGS` in a fresh home)."""
    with extra_home(tmp_path / "reference-home") as ref:
        r = collect(ref, "start", *args, "-q", timeout=180)
        assert r.returncode == 0, (r.returncode, r.stderr, job_diagnostics(ref))
        folder = next((ref / "data").glob("*/*"))
        return csv_bytes(folder)


def kill(home: Path, job_id: str) -> str:
    """SIGKILL the job's runner; the status a reader sees afterwards."""
    pid = runner_pid(home, job_id)
    os.kill(pid, signal.SIGKILL)
    poll_until(lambda: runner_gone(home, job_id, pid), 10, what="the killed runner to be gone")
    return status_json(home, job_id)["status"]


def running(home: Path, job_id: str) -> bool:
    return read_state(home, job_id)["status"] in ("running", "pending")


def requests(home: Path, ids: list[str]) -> int:
    return sum(read_state(home, j)["requests"] for j in ids)


def fuzz(home: Path, ids: list[str], rng: random.Random, kills: int, progressed: Callable[[], int],
         folder: Path, step: int = 4) -> tuple[int, int]:
    """Up to `kills` times SIGKILL a random running job's runner and resume it: either once
    `progressed()` has grown by a random 1..`step` and a random moment more has passed, or (one time
    in three) the moment a data file is seen to change (a batch just written: its coverage record may
    not be yet). Returns (kills made, kills after which the files had grown since the previous one:
    batches written mid-job and kept)."""
    made = grown = 0
    before = sizes(folder)
    for _ in range(kills):
        def done() -> bool:
            return not any(running(home, j) for j in ids)

        if rng.random() < 1 / 3:
            poll_until(lambda before=before: sizes(folder) != before or done(), 60, interval=0.002,
                       what="a data file to change")
        else:
            want = progressed() + rng.randint(1, step)
            poll_until(lambda want=want: progressed() >= want or done(), 60, what="more progress")
            time.sleep(rng.uniform(0.0, 0.15))  # a random moment, not synchronisation
        alive = [j for j in ids if running(home, j)]
        if not alive:
            break
        victim = rng.choice(alive)
        status = kill(home, victim)
        if status == "completed":  # killed while already finishing
            continue
        assert status == "interrupted", status
        made += 1
        now = sizes(folder)
        grown += now != before
        before = now
        r = collect(home, "resume", victim)
        assert r.returncode == 0, r.stderr
    return made, grown


def finish(home: Path, ids: list[str]) -> None:
    try:
        for job_id in ids:
            assert wait_rc(home, job_id, timeout=120) == 0, job_diagnostics(home)
    finally:
        for job_id in ids:
            if not runner_gone(home, job_id):
                collect(home, "cancel", job_id)


def assert_same(got: dict[str, bytes], expected: dict[str, bytes], seed: int) -> None:
    assert sorted(got) == sorted(expected), (seed, sorted(got), sorted(expected))
    for name in expected:
        assert got[name] == expected[name], f"{name} differs from the uninterrupted run (seed {seed})"


def assert_claims_dead(folder: Path) -> None:
    """Claim files left behind (a runner killed between storing and releasing) are dead: anyone can
    take their flock, so they hold nobody up."""
    for path in folder.glob(".ktrdr/*.claims/*.claim"):
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def seed_recent(home: Path, *args: str) -> None:
    r = collect(home, "start", *args, "-q", timeout=120)
    assert r.returncode == 0, (r.stderr, job_diagnostics(home))


def start_together(home: Path, *argsets: list[str]) -> list[str]:
    """`collect start -d` for each argument list at once; their job ids."""
    procs = [subprocess.Popen([*COLLECT, "start", *args, "--detach"], env=env_for(home), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in argsets]
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        ids.append(out.strip())
    return ids


# --- a backfill ---------------------------------------------------------------------------------


def test_kill9_during_a_backfill_then_resume_gives_the_forward_files(
        home: Path, tmp_path: Path, small_batches: Callable[[int], None]) -> None:
    rng, seed = seeded("backfill")
    small_batches(500)  # a rewrite every 2 requests of a symbol
    seed_recent(home, *SYMBOLS, *DEMO, *RECENT, "-o", "latency_ms=0")
    job_id = start_detached(home, *SYMBOLS, *DEMO, *BACK, "-o", "latency_ms=25", "-w", "2")
    made, grown = fuzz(home, [job_id], rng, 5, lambda: requests(home, [job_id]), demo_dir(home), step=8)
    finish(home, [job_id])
    assert made >= 2, f"the backfill finished before it could be killed (seed {seed})"
    assert grown >= 1, f"no batch was written between kills: nothing of a backfill was at stake (seed {seed})"
    assert_same(csv_bytes(demo_dir(home)), reference(tmp_path, *SYMBOLS, *DEMO, *BACK, "-o", "latency_ms=0"), seed)
    for path in demo_dir(home).glob("*.csv"):
        check_csv(path)
    assert_claims_dead(demo_dir(home))


# --- two cooperating jobs -----------------------------------------------------------------------


def test_kill9_among_two_jobs_backfilling_the_same_symbols_gives_the_forward_files(
        home: Path, tmp_path: Path, small_batches: Callable[[int], None]) -> None:
    """Two jobs extend the same series backwards at once, one window inside the other: claims share
    the ranges out (a batch holds its claims until it is written); each is killed at random moments
    (its claims die with it) and resumed."""
    rng, seed = seeded("cooperating backfills")
    small_batches(500)
    seed_recent(home, *SYMBOLS, *DEMO, *RECENT, "-o", "latency_ms=0")
    ids = start_together(home, [*SYMBOLS, *DEMO, *BACK, "-o", "latency_ms=40", "-w", "2"],
                         [*SYMBOLS, *DEMO, *INSIDE, "-o", "latency_ms=40", "-w", "2"])
    made, _ = fuzz(home, ids, rng, 5, lambda: requests(home, ids), demo_dir(home), step=8)
    finish(home, ids)
    assert made >= 2, f"the jobs finished before they could be killed (seed {seed})"
    assert_same(csv_bytes(demo_dir(home)), reference(tmp_path, *SYMBOLS, *DEMO, *BACK, "-o", "latency_ms=0"), seed)
    for path in demo_dir(home).glob("*.csv"):
        check_csv(path)
    assert_claims_dead(demo_dir(home))


# --- binance archives ---------------------------------------------------------------------------


@pytest.fixture
def exchange() -> Iterator[KeepAliveRunning]:
    archive = FakeArchive(corrupt={"BTCUSDT-5m-2024-10.zip"})  # refused: its month comes from the API
    route = exchange_route(archive)

    def slow(h: Handler, r: Request) -> None:
        time.sleep(LATENCY_S)
        route(h, r)

    yield from serve_keep_alive(slow)


def binance(api: KeepAliveRunning, source: str) -> list[str]:
    return ["-p", "binance", "-o", f"base_url={api.url}", "-o", f"archive_url={api.url}", "-o", "rate_limit=0",
            "-o", f"source={source}", "-w", "2"]


@pytest.mark.parametrize(("source", "tf", "batch", "straight"), [("auto", "5m", 5000, "auto"),
                                                                 ("archive", "1h", 1000, "api")])
def test_kill9_while_a_binance_backfill_reads_archives_gives_the_forward_files(
        home: Path, tmp_path: Path, small_batches: Callable[[int], None], exchange: KeepAliveRunning,
        source: str, tf: str, batch: int, straight: str) -> None:
    """Two months stored from the API, then the series extended back by four months of archives
    (source=auto: 5m, one corrupt archive fetched from the API instead; source=archive: 1h), killed
    at random moments and resumed: the files of one uninterrupted forward run with `straight` (1h:
    the API path; 5m: the same source, as the API path for 5m takes seconds here, and
    test_provider_binance_archive.py already compares the two)."""
    rng, seed = seeded(f"binance {source}")
    small_batches(batch)  # a rewrite about every archive
    pairs = ["BTC/USDT", "ETH/USDT"]
    seed_recent(home, *pairs, "-t", tf, "--start", "2025-02-01", "--end", "2025-04-01", *binance(exchange, "api"))
    window = ["-t", tf, "--start", "2024-10-01", "--end", "2025-04-01"]
    job_id = start_detached(home, *pairs, *window, *binance(exchange, source))
    made, grown = fuzz(home, [job_id], rng, 3, lambda: len(exchange.api.paths("/data/")),
                       home / "data" / "binance" / tf)
    finish(home, [job_id])
    assert made >= 1, f"the job finished before it could be killed (seed {seed})"
    archives = {r.path.rsplit("/", 1)[1] for r in exchange.api.paths("/data/")}
    assert len({a for a in archives if not a.endswith(".CHECKSUM")}) == 8  # four months, two pairs
    expected = reference(tmp_path, *pairs, *window, *binance(exchange, straight))
    got = csv_bytes(home / "data" / "binance" / tf)
    assert_same(got, expected, seed)
    assert sorted(got) == ["BTC_USDT.csv", "ETH_USDT.csv"]
    assert_claims_dead(home / "data" / "binance" / tf)


# --- the real batch size ------------------------------------------------------------------------


@pytest.mark.slow
def test_kill9_during_a_1m_backfill_with_the_real_batch_gives_the_forward_files(home: Path, tmp_path: Path) -> None:
    """1m bars, one year stored, extended back to three (two batches of 100,000 bars, each a rewrite
    of a 10-20 MB file), killed at random moments and resumed."""
    rng, seed = seeded("1m backfill")
    opts = ["BF", "-t", "1m", "-o", "max_bars=1000"]
    seed_recent(home, *opts, "--start", "2022-01-01", "--end", "2023-01-01", "-o", "latency_ms=0")
    window = ["--start", "2020-01-01", "--end", "2023-01-01"]
    job_id = start_detached(home, *opts, *window, "-o", "latency_ms=10")
    made, grown = fuzz(home, [job_id], rng, 6, lambda: requests(home, [job_id]) // 20, demo_dir(home, "1m"))
    finish(home, [job_id])
    assert made >= 2, f"the backfill finished before it could be killed (seed {seed})"
    assert_same(csv_bytes(demo_dir(home, "1m")), reference(tmp_path, *opts, *window, "-o", "latency_ms=0"), seed)
