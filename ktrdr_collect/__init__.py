"""ktrdr-collect: collect historical OHLCV market data as resumable jobs.

The Python API (``ProcessingEngine``, ``CancellationToken``, ...) is importable from here; it is
loaded on first use so that the `collect` command starts fast.
"""

from __future__ import annotations

import logging
from typing import Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())  # a library never prints on its own

_API = {
    "collect", "CancellationToken", "PauseGate", "ProcessingCancelledException", "ProcessingEngine",
    "ProcessingProgress", "RetryPolicy", "SymbolResult", "create_provider", "open_store",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        from ktrdr_collect import api

        return getattr(api, name)
    raise AttributeError(f"module 'ktrdr_collect' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
