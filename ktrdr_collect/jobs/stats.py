"""Analytics over finished jobs: what ran, what failed, how fast."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any

from ktrdr_collect.jobs.history import FinishedRow, History


def _rates(jobs: list[FinishedRow]) -> dict[str, Any]:
    by_status = Counter(j.status for j in jobs)
    durations = [float(j.elapsed_s or 0.0) for j in jobs]
    total_time = sum(durations)
    candles = sum(int(j.candles or 0) for j in jobs)
    symbols_ok = sum(int(j.symbols_completed or 0) for j in jobs)
    clean = sum(1 for j in jobs if j.status == "completed" and not j.symbols_failed)
    return {
        "jobs": len(jobs),
        "by_status": dict(sorted(by_status.items())),
        "success_rate": round(clean / len(jobs), 4) if jobs else None,
        "symbols_completed": symbols_ok,
        "symbols_failed": sum(int(j.symbols_failed or 0) for j in jobs),
        "candles": candles,
        "requests": sum(int(j.requests or 0) for j in jobs),
        "duration_mean_s": round(statistics.fmean(durations), 3) if durations else None,
        "duration_median_s": round(statistics.median(durations), 3) if durations else None,
        "candles_per_s": round(candles / total_time, 2) if total_time else None,
        "symbols_per_s": round(symbols_ok / total_time, 4) if total_time else None,
    }


def compute_stats(history: History, since: str | None) -> dict[str, Any]:
    jobs = history.finished_since(since)
    per_provider: dict[str, list[FinishedRow]] = defaultdict(list)
    for job in jobs:
        per_provider[job.provider].append(job)
    return {
        "since": since,
        **_rates(jobs),
        "top_errors": [{"error": e, "count": n} for e, n in history.errors_since(since)],
        "providers": {name: _rates(group) for name, group in sorted(per_provider.items())},
    }
