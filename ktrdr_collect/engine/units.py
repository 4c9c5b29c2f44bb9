"""Several timeframes in one batch: the unit of work is a (symbol, timeframe) pair.

The engine runs one timeframe at a time and knows series by symbol. A job of several timeframes
keeps one tracker over all its pairs, keyed `SYMBOL@TF` (`@` is never part of a symbol), and hands
the engine a `TimeframeView` of it for each timeframe: the same tracker, with every symbol the
engine names turned into that pair's key. A job of one timeframe keys by plain symbol, as before.
"""

from __future__ import annotations

from typing import Any

from ktrdr_collect.engine.progress import ProgressTracker

SEPARATOR = "@"
_BY_SYMBOL = frozenset({
    "symbol_started", "stage", "waiting", "planned", "request_made", "segment_done", "candles_stored",
    "symbol_finished", "snapshot_symbol",
})
"""ProgressTracker's methods whose first argument is a symbol."""


def unit_key(symbol: str, timeframe: str, several: bool) -> str:
    """The tracker's key of a pair: the symbol alone when the job has one timeframe."""
    return f"{symbol}{SEPARATOR}{timeframe}" if several else symbol


def split_key(key: str, timeframe: str) -> tuple[str, str]:
    """(symbol, timeframe) of a key; a plain symbol is of `timeframe`."""
    symbol, sep, tf = key.partition(SEPARATOR)
    return (symbol, tf) if sep else (key, timeframe)


class TimeframeView:
    """`tracker` as the engine sees it while it runs `timeframe`."""

    def __init__(self, tracker: ProgressTracker, timeframe: str) -> None:
        self._tracker = tracker
        self._timeframe = timeframe

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._tracker, name)
        if name not in _BY_SYMBOL:
            return attr
        timeframe = self._timeframe

        def keyed(symbol: str, *args: Any, **kwargs: Any) -> Any:
            return attr(unit_key(symbol, timeframe, True), *args, **kwargs)

        return keyed
