"""The Python API: drive collection from code (notebooks, scripts, other tools).

    from ktrdr_collect import ProcessingEngine, create_provider, open_store
    engine = ProcessingEngine(create_provider("demo"), open_store("csv", Path("data")))
    results = engine.process_batch(["AAPL"], "1d", start="2020-01-01", end="2024-01-01")
"""

from __future__ import annotations

from ktrdr_collect.engine.cancellation import CancellationToken, PauseGate, ProcessingCancelledException
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.engine.pipeline import RetryPolicy, SymbolResult
from ktrdr_collect.engine.progress import ProcessingProgress
from ktrdr_collect.providers.registry import create_provider
from ktrdr_collect.storage.open import open_store

__all__ = [
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
