"""yahoo_requests: requests per symbol for 5 years of 1h Yahoo bars vs the calendar minimum.

Planned: what the engine plans (engine/pipeline.py `_run`): per symbol, the window
[start, min(end, now - 1 bar)) split by `provider.calendar.split("1h", ..., max_bars_for("1h"))`
of a `YahooProvider` (no exchange_calendars here: weekdays, NYSE session). Minimum:
ceil(calendar.count("1h", window) / max_bars_for("1h")).
Real: `ProcessingEngine(YahooProvider(base_url=<local server>, rate_limit=0), CsvStore(tmp))
.process_batch(5 symbols, "1h", 2015-01-01, 2020-01-01)` called directly (not through the CLI, so
`check_window`'s 730-day limit for 1h is bypassed by the explicit window far in the past) against a
local HTTP server answering in the Yahoo v8 chart format (tests/providers/fake_yahoo.py, New York
listings); requests are counted both
by the engine (Σ SymbolResult.requests) and by the server; the stored rows are checked against
the bars the server has. A 1d 20-year run is shown too. Aim: requests <= 1.05 x minimum.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

from bench._common import Row, fresh_home, log, standalone

AIM = 1.05
CONFIGS = [("1h", "2015-01-01", "2020-01-01", "5y"), ("1d", "2000-01-01", "2020-01-01", "20y")]


def fake_yahoo(symbols: list[str]):  # noqa: ANN201 - (serve() context manager, fake_yahoo module)
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.providers import fake_apis, fake_yahoo

    market = fake_yahoo.YahooMarket({s: fake_yahoo.Listing(s, "America/New_York") for s in symbols}, time.time)
    return (lambda: contextlib.contextmanager(fake_apis.serve)(market.route)), market


def run(quick: bool = False) -> list[Row]:
    from ktrdr_collect.engine.engine import ProcessingEngine, to_epoch
    from ktrdr_collect.providers.yahoo import YahooProvider
    from ktrdr_collect.storage.csv_store import CsvStore
    from ktrdr_collect.storage.timeframes import timeframe_seconds

    n = 3 if quick else 5
    syms = [f"YQ{i}" for i in range(n)]
    rows = []
    server, market = fake_yahoo(syms)
    from tests.providers.fake_yahoo import expected_daily, expected_intraday
    for tf, start, end, label in CONFIGS:
        with fresh_home() as home, server() as api:
            provider = YahooProvider({"base_url": api.url, "rate_limit": 0, "holidays": "off", "client": "stdlib"})
            s, e = to_epoch(start), min(to_epoch(end), int(time.time()) - timeframe_seconds(tf))
            max_bars = provider.max_bars_for(tf)
            bars = provider.calendar.count(tf, s, e)
            planned = len(provider.calendar.split(tf, s, e, max_bars))
            need = math.ceil(bars / max_bars)
            engine = ProcessingEngine(provider, CsvStore(home / "data"), workers=4)
            t0 = time.perf_counter()
            results = engine.process_batch(syms, tf, start=start, end=end)
            wall = time.perf_counter() - t0
            made = sum(r.requests for r in results)
            served = len(api.api.paths("/v8/finance/chart/"))
            problems = [f"{r.symbol} {r.status}: {r.error}" for r in results if not r.ok]
            for sym in syms:
                listing = market.listings[sym]
                expect = len(expected_daily(listing, s, to_epoch(end)) if tf == "1d"
                             else expected_intraday(listing, timeframe_seconds(tf), s, to_epoch(end)))
                path = home / "data" / "yahoo" / tf / f"{sym}.csv"
                got = sum(1 for _ in path.open()) - 1 if path.exists() else 0
                if got != expect:
                    problems.append(f"{sym}: {got} rows stored, server has {expect}")
        log(f"yahoo_requests {tf} {label}: {bars} bars/symbol, max {max_bars}/request: planned {planned}, "
            f"min {need} per symbol; made {made} ({served} served) for {n} symbols in {wall:.1f}s")
        check = "stored rows match the server" if not problems else "; ".join(problems[:3])
        rows.append(Row(f"yahoo_requests {tf} {label} planned (calendar.split)", f"{planned} req/sym",
                        f"min {need} req/sym", planned / need, f"<= {AIM}x", planned <= AIM * need,
                        note=f"{bars} {tf} bars per symbol, max_bars_for({tf!r}) = {max_bars}"))
        rows.append(Row(f"yahoo_requests {tf} {label} real, fake v8 server ({n} sym)", f"{made} req",
                        f"min {need * n} req", made / (need * n), f"<= {AIM}x",
                        made <= AIM * need * n and served == made and not problems,
                        note=f"server counted {served} requests; {check}"))
    return rows


if __name__ == "__main__":
    standalone(run)
