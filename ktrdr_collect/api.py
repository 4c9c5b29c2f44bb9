"""The Python API: drive collection from code (notebooks, scripts, other tools).

    import ktrdr_collect
    results = ktrdr_collect.collect(["AAPL", "MSFT"], "1d", start="2020-01-01", end="2024-01-01")

    # or, with full control (progress callbacks, cancellation tokens, pause gates):
    engine = ktrdr_collect.ProcessingEngine(ktrdr_collect.create_provider("demo"),
                                            ktrdr_collect.open_store("csv", Path("data")))
    results = engine.process_batch(["AAPL"], "1d", start="2020-01-01", end="2024-01-01")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from ktrdr_collect.engine.cancellation import CancellationToken, PauseGate, ProcessingCancelledException
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.engine.pipeline import RetryPolicy, SymbolResult
from ktrdr_collect.engine.progress import ProcessingProgress
from ktrdr_collect.providers.registry import create_provider
from ktrdr_collect.storage.open import open_store

__all__ = [
    "collect",
    "CancellationToken",
    "PauseGate",
    "ProcessingCancelledException",
    "ProcessingEngine",
    "ProcessingProgress",
    "RetryPolicy",
    "SymbolResult",
    "create_provider",
    "open_store",
]


def collect(
    symbols: Iterable[str] | str,
    timeframe: str | Iterable[str] = "1d",
    start: datetime | str | int | None = None,
    end: datetime | str | int | None = None,
    provider: str = "demo",
    options: Mapping[str, Any] | None = None,
    data_dir: str | Path | None = None,
    format: str = "csv",
    workers: int = 4,
    days: int = 365,
    progress: bool = True,
    cancellation_token: CancellationToken | None = None,
) -> list[SymbolResult]:
    """Collect bars for `symbols` into the data folder and return one result per symbol (per
    symbol and timeframe, timeframe by timeframe, when `timeframe` names several: "1h,1d" or a list).

    `start` is a date, ISO date-time, epoch seconds, "earliest", or None for the last `days` days;
    `end` defaults to now. With `progress=True` a tqdm bar shows symbols done and the ETA (in a
    notebook, tqdm.auto draws a widget). Ctrl-C (KeyboardInterrupt) stops the workers; data stored
    so far is kept. Cancelling `cancellation_token` from another thread raises
    ProcessingCancelledException carrying the partial results.
    """
    from ktrdr_collect import paths
    from ktrdr_collect.planning import plan_job

    plan = plan_job(
        [symbols] if isinstance(symbols, str) else list(symbols),
        timeframe if isinstance(timeframe, str) else list(timeframe), start, end,
        days if start is None else None, provider,
        Path(data_dir).expanduser() if data_dir is not None else paths.default_data_dir(),
        default_days=days, options=options, recorded=False, workers=workers, fmt=format,
    )
    source = create_provider(plan.provider, plan.options)
    engine = ProcessingEngine(source, open_store(plan.format, plan.data_dir), workers=plan.workers)
    bar = _progress_bar(len(plan.symbols) * len(plan.timeframes), plan.provider) if progress else None
    results: list[SymbolResult] = []
    try:
        for tf in plan.timeframes:
            done = len(results)
            update = (lambda p, done=done: bar.update_from(p, done)) if bar else None
            results += engine.process_batch(
                plan.symbols, tf, "earliest" if plan.start is None else plan.start_ts, plan.end_ts,
                progress_callback=update, cancellation_token=cancellation_token,
            )
        return results
    finally:
        if bar is not None:
            bar.close()
        engine.provider.close()


class _TqdmProgress:
    """Adapts ProcessingProgress to a tqdm bar: symbols done, errors and our ETA as postfix."""

    def __init__(self, total: int, provider: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="sym", desc=f"collect ({provider})", dynamic_ncols=True)

    def update_from(self, p: ProcessingProgress, done_before: int = 0) -> None:
        self.bar.n = done_before + p.completed_symbols
        eta = "?" if p.estimated_remaining_ms is None else f"{p.estimated_remaining_ms / 1000:.1f}s"
        self.bar.set_postfix_str(f"errors={p.errors_count} eta={eta}", refresh=True)

    def close(self) -> None:
        self.bar.close()


def _progress_bar(total: int, provider: str) -> _TqdmProgress:
    return _TqdmProgress(total, provider)
