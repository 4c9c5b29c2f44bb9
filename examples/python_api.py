"""The Python API, end to end: one call with a progress bar, then the engine with a callback and
a cancellation token. Runs offline on the demo provider.

    python examples/python_api.py [DATA_DIR]
"""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path

import ktrdr_collect
from ktrdr_collect import CancellationToken, ProcessingCancelledException, ProcessingProgress


def simple(data_dir: Path) -> None:
    # One call: validates symbols, shows a tqdm bar (a widget in notebooks), returns results.
    results = ktrdr_collect.collect(
        ["AAPL", "MSFT", "NOPE"], timeframe="1d", start="2020-01-01", end="2024-01-01",
        options={"latency_ms": 10, "fail_symbols": "NOPE"}, data_dir=data_dir,
    )
    for r in results:
        print(f"{r.symbol}: {r.status}, {r.candles} candles, {r.requests} requests, error={r.error}")


def with_engine(data_dir: Path) -> None:
    # Full control: a progress callback and a token another thread may cancel.
    provider = ktrdr_collect.create_provider("demo", {"latency_ms": 20, "max_bars": 100})
    engine = ktrdr_collect.ProcessingEngine(provider, ktrdr_collect.open_store("csv", data_dir), workers=2)
    token = CancellationToken()

    def on_progress(p: ProcessingProgress) -> None:
        if p.completed_symbols >= 3:
            token.cancel()  # e.g. a "stop" button in a UI

    symbols = [f"SYM{i}" for i in range(20)]
    try:
        engine.process_batch(symbols, "1h", "2022-01-01", "2023-01-01",
                             progress_callback=on_progress, cancellation_token=token)
    except ProcessingCancelledException as e:
        done = [r.symbol for r in e.partial_results if r.ok]
        print(f"cancelled after {len(done)} completed symbols: {', '.join(done)}")
    print("worker threads left:", sum(t.name.startswith("ktrdr-") for t in threading.enumerate()))


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="ktrdr-api-"))
    simple(folder)
    with_engine(folder)
    print("data in", folder)
