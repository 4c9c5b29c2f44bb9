"""binance_archive: one year of 1m for 20 pairs through `-o source=auto` against a local archive server.

`ProcessingEngine(BinanceProvider(base_url=archive_url=<local server>, source=auto, rate_limit=0),
CsvStore(tmp), workers=4).process_batch(20 pairs, "1m", 2025-01-01, 2026-01-01)` against one local
keep-alive server answering both `/api/v3/klines` and the data.binance.vision layout
(tests/providers/fake_binance_archive.py: each zip and its CHECKSUM built from the klines the fake API
serves; microsecond times, as Binance's 2025 files). One pair's 2025-06 archive is served corrupt:
it must be refused (checksum) and its month fetched from the API.

Rows: engine requests per pair (aim <= 14; the API alone would need 526), HTTP GETs per pair (an
archive is two: CHECKSUM and zip), that every stored file equals the bars the fake API serves
(test_provider_binance_archive.py shows the API path stores exactly those, byte for byte), the
corrupt archive refused and its month from the API, wall and connections. The zips are built before
the clock starts (the fake's own work is not ours).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench._common import Row, fresh_home, log, standalone

AIM = 14
START, END = 1_735_689_600, 1_767_225_600  # 2025-01-01 .. 2026-01-01
NOW = 1_795_176_000.0  # 2026-11-20: every 2025 month is archived
CORRUPT_MONTH = ("2025-06", 1_748_736_000, 1_751_328_000)


def run(quick: bool = False) -> list[Row]:
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from ktrdr_collect.engine.engine import ProcessingEngine
    from ktrdr_collect.providers.binance import BinanceProvider
    from ktrdr_collect.providers.binance_archive import month_of
    from ktrdr_collect.storage.csv_store import CsvStore
    from tests.providers.browser_fakes import serve_keep_alive
    from tests.providers.fake_binance_archive import FakeArchive, exchange_route, market_bars

    pairs = 3 if quick else 20
    markets = [f"P{i:02d}USDT" for i in range(pairs)]
    archive = FakeArchive(listed={m: 1_500_000_000 for m in markets})
    corrupt = f"{markets[0]}-1m-{CORRUPT_MONTH[0]}.zip"
    archive.corrupt.add(corrupt)
    t0 = time.perf_counter()
    month = month_of(START)
    while month.start < END:
        for m in markets:
            archive.zip_bytes(month.file_name(m, "1m"), m, "1m", month.start, month.end)
        month = month_of(month.end)
    log(f"binance_archive: {pairs * 12} zips built in {time.perf_counter() - t0:.1f}s")
    with fresh_home() as home:
        for api in serve_keep_alive(exchange_route(archive)):
            provider = BinanceProvider({"base_url": api.url, "archive_url": api.url, "rate_limit": 0,
                                        "source": "auto"}, clock=lambda: NOW)
            try:
                t0 = time.perf_counter()
                results = ProcessingEngine(provider, CsvStore(home / "data"), workers=4, now=lambda: NOW
                                           ).process_batch(markets, "1m", START, END)
                wall = time.perf_counter() - t0
            finally:
                provider.close()
            gets = len(api.api.requests)
            api_gets = api.api.paths("/api/")
            connections = api.connections
        store = CsvStore(home / "data")
        problems = [f"{r.symbol} {r.status}: {r.error}" for r in results if not r.ok]
        for m in markets:
            if store.read("binance", "1m", m) != market_bars(archive.listed, m, "1m", START, END):
                problems.append(f"{m}: stored bars differ from the API's")
    per_pair = max(r.requests for r in results)
    fallback_ok = (len(api_gets) == 44 and all(
        r.params["symbol"] == markets[0] and CORRUPT_MONTH[1] <= int(r.params["startTime"]) // 1000 < CORRUPT_MONTH[2]
        for r in api_gets))
    log(f"binance_archive: {pairs} pairs, {sum(r.candles for r in results)} bars in {wall:.1f}s; "
        f"{per_pair} requests per pair, {gets} GETs, {len(api_gets)} to the API, {connections} connections")
    check = "stored = API bars" if not problems else "; ".join(problems[:3])
    return [
        Row(f"binance_archive 1y 1m, {pairs} pairs: requests/pair", f"{per_pair} req", "API alone 526 req",
            per_pair / 526, f"<= {AIM} req/pair", per_pair <= AIM and not problems, note=check),
        Row(f"binance_archive archive GETs ({pairs} pairs)", f"{gets - len(api_gets)} GETs",
            f"{pairs * 24} (2 per archive)", (gets - len(api_gets)) / (pairs * 24), "info", None,
            note=f"+{len(api_gets)} API requests for the corrupt {corrupt}; {connections} connections"),
        Row("binance_archive corrupt archive refused", "API for its month" if fallback_ok else "NOT refused",
            "44 requests expected", len(api_gets) / 44, "checksum verified", fallback_ok),
        Row(f"binance_archive wall ({pairs} pairs, {sum(r.candles for r in results)} bars)", f"{wall:.1f} s",
            "-", None, "info", None, note=f"{wall / max(1, sum(r.candles for r in results)) * 1e6:.1f} µs/bar"),
    ]


if __name__ == "__main__":
    standalone(run)
