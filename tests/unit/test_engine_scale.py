"""The engine at many symbols: waiting for the next finished symbol looks at a window of 2x workers
futures, never at every pending symbol (that made the main loop O(symbols^2))."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from ktrdr_collect.engine import engine as engine_module
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.engine.pipeline import RetryPolicy
from ktrdr_collect.storage.csv_store import CsvStore
from tests.unit.fakes import ScriptedProvider

START, END = "2023-01-02", "2023-03-01"


def test_the_main_loop_waits_on_at_most_twice_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real_wait = engine_module.wait

    def counting_wait(futures: Iterable[Any], **kw: Any) -> Any:
        futures = set(futures)
        sizes.append(len(futures))
        return real_wait(futures, **kw)

    monkeypatch.setattr(engine_module, "wait", counting_wait)
    provider = ScriptedProvider()
    symbols = [f"S{i:03d}" for i in range(300)]
    engine = ProcessingEngine(provider, CsvStore(tmp_path / "data"), workers=3,
                              retry=RetryPolicy(attempts=2, base_s=0.001, cap_s=0.002))
    results = engine.process_batch(symbols, "1d", START, END)
    assert sizes and max(sizes) <= 6  # 2 x workers, however many symbols
    assert [r.symbol for r in results] == symbols and all(r.ok for r in results)
    assert {c[0] for c in provider.calls} == set(symbols)
