"""Stress: 1,000 one-request symbols cancelled from another thread at random moments, many times.

Every run must end (no deadlock), leave no thread behind, and leave files that agree with the
partial results it returned.
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ktrdr_collect.engine.cancellation import CancellationToken, ProcessingCancelledException
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.engine.pipeline import SymbolResult
from ktrdr_collect.providers.demo import DemoProvider
from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.series import read_coverage_file

SYMBOLS = [f"X{i:04d}" for i in range(1000)]
START, END = "2023-10-03", "2023-12-02"  # 1d over 60 days: one request per symbol
RUNS = 20
LATE_RUNS = 2  # of which these cancel near the end (after 80-99 % of the symbols)
DEADLINE_S = 30.0
SEED = 20240611
CANCEL_WITHIN_S = 1.5  # the other runs cancel within this many seconds (the first ~5-40 %)


def fast_dir(tmp_path: Path) -> tempfile.TemporaryDirectory[str]:
    """tmpfs when there is one (fsync is free there, so a run takes ~2 s instead of ~4)."""
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else str(tmp_path)
    return tempfile.TemporaryDirectory(prefix="ktrdr-stress-", dir=base)


def run_and_cancel(root: Path, rng: random.Random, late: bool = False) -> tuple[list[SymbolResult], float, bool]:
    """Run a batch on its own thread, cancel it from this one after a random delay (`late`: once a
    random 80-99 % of the symbols are done); return the results it reported, how long it took,
    and whether it was cancelled."""
    engine = ProcessingEngine(DemoProvider({"latency_ms": rng.choice([0, 0, 1])}), CsvStore(root),
                              workers=rng.choice([1, 4, 8]))
    token = CancellationToken()
    outcome: dict[str, object] = {}
    finished = threading.Semaphore(0)

    def batch() -> None:
        try:
            outcome["results"] = engine.process_batch(SYMBOLS, "1d", start=START, end=END,
                                                      cancellation_token=token, progress_callback=lambda p: None,
                                                      symbol_callback=lambda r: finished.release())
        except ProcessingCancelledException as e:
            outcome["results"], outcome["cancelled"] = e.partial_results, True
        except BaseException as e:  # surfaced by the assertion below
            outcome["error"] = e

    worker = threading.Thread(target=batch, name="stress-batch")
    t0 = time.monotonic()
    worker.start()
    if late:
        for _ in range(rng.randint(800, 990)):
            finished.acquire(timeout=DEADLINE_S)
    else:
        token.wait(rng.uniform(0.0, CANCEL_WITHIN_S))
    token.cancel()
    worker.join(DEADLINE_S)
    assert not worker.is_alive(), "deadlock: the batch did not end after cancel"
    assert "error" not in outcome, outcome.get("error")
    return outcome["results"], time.monotonic() - t0, bool(outcome.get("cancelled"))  # type: ignore[return-value]


def check_files_agree(store: CsvStore, results: list[SymbolResult]) -> None:
    by_symbol = {r.symbol: r for r in results}
    assert len(by_symbol) == len(results), "a symbol reported twice"
    for symbol in SYMBOLS:
        path, coverage_path = store.path("demo", "1d", symbol), store.coverage_path("demo", "1d", symbol)
        result = by_symbol.get(symbol)
        if result is None:  # never started: nothing on disk
            assert not path.exists() and not coverage_path.exists(), symbol
            continue
        bars = store.read("demo", "1d", symbol)
        assert len(bars) == result.candles, (symbol, result)
        coverage = read_coverage_file(store.coverage_path("demo", "1d", symbol))
        if result.status == "completed":
            assert result.candles > 0 and coverage, (symbol, result)
        if bars:  # every stored bar is inside the recorded coverage
            assert coverage and all(any(a <= b[0] < z for a, z in coverage) for b in bars), symbol
        else:
            assert not coverage, (symbol, coverage)


def ktrdr_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ktrdr-")]


def check_one_run(root: Path, rng: random.Random, run: int, before: set[threading.Thread]) -> bool:
    """One batch cancelled at a random moment; True if the cancel came before it finished."""
    results, took, cancelled = run_and_cancel(root, rng, late=run >= RUNS - LATE_RUNS)
    assert ktrdr_threads() == [], f"run {run}: threads left: {ktrdr_threads()}"
    assert set(threading.enumerate()) <= before, f"run {run}: leaked {set(threading.enumerate()) - before}"
    if not cancelled:
        assert len(results) == len(SYMBOLS) and all(r.ok for r in results)
    assert took < DEADLINE_S
    check_files_agree(CsvStore(root), results)
    return cancelled


def test_random_cancellations_never_deadlock_leak_or_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_COLLECT_HOME", str(tmp_path / "home"))
    rng = random.Random(SEED)
    before = set(threading.enumerate())
    with fast_dir(tmp_path) as base:
        cancelled = sum(check_one_run(Path(base) / f"data{run}", rng, run, before) for run in range(RUNS))
    assert cancelled >= RUNS // 2, "the cancellations came too late to test anything"
