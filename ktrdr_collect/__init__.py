"""ktrdr-collect: collect historical OHLCV market data as resumable jobs."""

__version__ = "0.1.0"
