"""The ccxt side of `bench.peer`: `python -m bench._peer_ccxt URL OUT_DIR START END CONCURRENCY PAIRS`.

Downloads 1m candles the way freqtrade's `_async_get_historic_ohlcv` does with ccxt's async binance
client: every `since` of the window (one per 1000 candles) for every pair as a coroutine, gathered,
here at most CONCURRENCY requests in flight (the same as our workers); then each pair's candles
sorted, de-duplicated, clipped to the window and written as CSV (timestamp, open, high, low, close,
volume), as our side stores them. ccxt's own rate limiter is off (the fake has no limit; ours runs
with rate_limit=0). Prints one JSON line: bars and requests.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

ONE_CALL = 1000 * 60_000


async def download(url: str, out: Path, start_ms: int, end_ms: int, concurrency: int, pairs: list[str]) -> dict:
    import ccxt.async_support as ccxt  # type: ignore[import-not-found]

    exchange = ccxt.binance({"enableRateLimit": False,
                             "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False}})
    for key, value in list(exchange.urls["api"].items()):
        if isinstance(value, str) and value.startswith("https://api.binance.com"):
            exchange.urls["api"][key] = value.replace("https://api.binance.com", url)
    gate = asyncio.Semaphore(concurrency)
    requests = 0

    async def chunk(pair: str, since: int) -> list[list[float]]:
        nonlocal requests
        async with gate:
            requests += 1
            return await exchange.fetch_ohlcv(pair, "1m", since=since, limit=1000)

    try:
        await exchange.load_markets()
        jobs = {pair: [chunk(pair, since) for since in range(start_ms, end_ms, ONE_CALL)] for pair in pairs}
        gathered = await asyncio.gather(*(asyncio.gather(*coros) for coros in jobs.values()))
    finally:
        await exchange.close()
    bars = 0
    for pair, chunks in zip(jobs, gathered, strict=True):
        candles = sorted({c[0]: c for part in chunks for c in part if start_ms <= c[0] < end_ms}.values())
        bars += len(candles)
        with (out / f"{pair.replace('/', '_')}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["timestamp", "open", "high", "low", "close", "volume"])
            for ts, o, h, lo, c, v in candles:
                stamp = datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                w.writerow([stamp, o, h, lo, c, v])
    return {"bars": bars, "requests": requests}


if __name__ == "__main__":
    url, out, start, end, concurrency, pairs = sys.argv[1:7]
    result = asyncio.run(download(url, Path(out), int(start) * 1000, int(end) * 1000, int(concurrency),
                                  pairs.split(",")))
    print(json.dumps(result))
