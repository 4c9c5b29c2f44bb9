"""engine_throughput: 200 symbols x 1d x 10 years, demo latency 20 ms, 8 workers.

Wall time of ProcessingEngine.process_batch (CsvStore in a fresh temp dir) against
  * the ideal: total requests x latency / workers (pure waiting, zero overhead), and
  * a bare ThreadPoolExecutor(8) doing the same number of 20 ms sleeps, measured in the same run.
Aim: ideal / wall >= 0.95.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from bench._common import Row, fmt_s, fresh_home, log, standalone

LATENCY_MS = 20
WORKERS = 8
END = "2024-01-01"
START = "2014-01-01"
AIM = 0.95


def symbols(n: int) -> list[str]:
    return [f"S{i:04d}" for i in range(n)]


def bare_pool(n_requests: int, latency_s: float, workers: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: time.sleep(latency_s), range(n_requests)))
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[Row]:
    from ktrdr_collect.engine.engine import ProcessingEngine
    from ktrdr_collect.providers.demo import DemoProvider
    from ktrdr_collect.storage.csv_store import CsvStore

    n = 50 if quick else 200
    with fresh_home() as home:
        provider = DemoProvider({"latency_ms": LATENCY_MS})
        engine = ProcessingEngine(provider, CsvStore(home / "data"), workers=WORKERS)
        t0 = time.perf_counter()
        results = engine.process_batch(symbols(n), "1d", start=START, end=END)
        wall = time.perf_counter() - t0
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    requests = sum(r.requests for r in results)
    ideal = requests * LATENCY_MS / 1000 / WORKERS
    pool = bare_pool(requests, LATENCY_MS / 1000, WORKERS)
    # CPU floor: a quarter of the symbols with latency 0 (same workers), scaled x4. Shows how much
    # of the wall time is Python work (bar synthesis, cleaning, CSV formatting, fsync) under the GIL.
    sub = max(1, n // 4)
    with fresh_home() as home:
        engine0 = ProcessingEngine(DemoProvider({"latency_ms": 0}), CsvStore(home / "data"), workers=WORKERS)
        t0 = time.perf_counter()
        engine0.process_batch(symbols(sub), "1d", start=START, end=END)
        cpu_floor = (time.perf_counter() - t0) * n / sub
    log(f"engine_throughput: {n} symbols, {requests} requests, wall {wall:.3f}s, ideal {ideal:.3f}s, "
        f"bare pool {pool:.3f}s, latency-0 floor {cpu_floor:.3f}s")
    eff = ideal / wall
    eff_pool = pool / wall
    return [
        Row(f"engine_throughput ({n} sym, {requests} req)", fmt_s(wall), f"ideal {fmt_s(ideal)}", eff,
            f"ideal/wall >= {AIM}", eff >= AIM),
        Row("engine_throughput vs bare pool", fmt_s(wall), f"ThreadPool(8) sleeps {fmt_s(pool)}", eff_pool,
            f"pool/wall >= {AIM}", eff_pool >= AIM),
        Row("engine_throughput latency-0 floor", fmt_s(wall), f"latency 0: {fmt_s(cpu_floor)}", cpu_floor / wall,
            "(info: floor/wall ~1 => CPU-bound)", None,
            note=f"latency-0 floor measured on {sub} symbols and scaled x{n / sub:g}; "
                 "ideal assumes zero CPU per request"),
    ]


if __name__ == "__main__":
    standalone(run)
