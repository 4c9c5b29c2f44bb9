"""yahoo_exchanges: a 20-symbol Yahoo daily job across five exchanges vs each one's own minimum.

Four symbols on each of New York (XNYS), Shanghai (XSHG), Jakarta (XIDX), London (XLON) and
Sydney (XASX), 2015-2024 of 1d bars, through `ProcessingEngine(YahooProvider(base_url=<local
server>))` against tests/providers/fake_yahoo.py: a server answering in the v8 chart format whose
trading days are each exchange's real sessions (exchange_calendars), daily bars stamped at the
local open as Yahoo does. Minimum: per symbol ceil(sessions of *its* exchange / bars per request).
Run at Yahoo's 5000 bars per request and at 250 (where planning with another exchange's
calendar would show). Requests are counted by the engine and by the server; every stored file is
compared with the session-dated bars the server has. Aim: requests <= 1.05 x minimum.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from datetime import date
from pathlib import Path

from bench._common import Row, fresh_home, log

AIM = 1.05
EXCHANGES = {"XNYS": ("America/New_York", "09:30", "16:00", ""), "XSHG": ("Asia/Shanghai", "09:30", "15:00", ".SS"),
             "XIDX": ("Asia/Jakarta", "09:00", "16:00", ".JK"), "XLON": ("Europe/London", "08:00", "16:30", ".L"),
             "XASX": ("Australia/Sydney", "10:00", "16:00", ".AX")}
START, END = "2015-01-01", "2025-01-01"


def listings():  # noqa: ANN201 - {symbol: fake_yahoo.Listing}
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from ktrdr_collect.storage.exchanges import exchange_sessions
    from tests.providers.fake_yahoo import Listing

    out = {}
    for code, (tz, opens, closes, suffix) in EXCHANGES.items():
        sessions = exchange_sessions(code) or {}
        first, last = date(2014, 12, 1), date(2025, 2, 1)
        days = (date.fromordinal(n) for n in range(first.toordinal(), last.toordinal()))
        holidays = frozenset(d for d in days if d.weekday() < 5
                             and d.toordinal() - date(1970, 1, 1).toordinal() not in sessions)
        for i in range(4):
            symbol = f"{code[1:]}{i}{suffix}"
            out[symbol] = Listing(symbol, tz, opens, closes, code, holidays=holidays)
    return out


def run(quick: bool = False) -> list[Row]:
    from ktrdr_collect.engine.engine import ProcessingEngine, to_epoch
    from ktrdr_collect.providers.yahoo import YahooProvider
    from ktrdr_collect.storage.csv_store import CsvStore
    from tests.providers.fake_apis import serve
    from tests.providers.fake_yahoo import YahooMarket, expected_daily

    market = YahooMarket(listings(), time.time)
    symbols = list(market.listings)
    s, e = to_epoch(START), to_epoch(END)
    rows = []
    for max_bars in (5000, 250):
        with fresh_home() as home, contextlib.contextmanager(serve)(market.route) as api:
            provider = YahooProvider({"base_url": api.url, "rate_limit": 0, "client": "stdlib"})
            provider.max_bars = max_bars
            need = sum(math.ceil(provider.calendar_for(sym).count("1d", s, e) / max_bars) for sym in symbols)
            store = CsvStore(home / "data")
            t0 = time.perf_counter()
            results = ProcessingEngine(provider, store, workers=4).process_batch(symbols, "1d", START, END)
            wall = time.perf_counter() - t0
            made = sum(r.requests for r in results)
            served = len(api.api.paths("/v8/finance/chart/"))
            problems = [f"{r.symbol} {r.status}: {r.error}" for r in results if not r.ok]
            problems += [f"{sym}: stored bars differ from the exchange's" for sym in symbols
                         if store.read("yahoo", "1d", sym) != expected_daily(market.listings[sym], s, e)]
        log(f"yahoo_exchanges max_bars={max_bars}: {made} requests ({served} served), minimum {need}, "
            f"{wall:.2f}s for {len(symbols)} symbols")
        rows.append(Row(f"yahoo_exchanges 20 sym x 10y 1d, 5 exchanges, {max_bars} bars/req",
                        f"{made} req ({wall:.1f}s)", f"min {need} req", made / need, f"<= {AIM}x",
                        made <= AIM * need and not problems,
                        note="session dates match" if not problems else "; ".join(problems[:3])))
    rows.append(before_row(provider, symbols, s, e))
    return rows


def before_row(provider, symbols: list[str], s: int, e: int) -> Row:  # noqa: ANN001
    """0.1 planned every symbol with New York's calendar: sessions of other exchanges on NYSE
    holidays were skipped as "no session" (permanent holes)."""
    ny = provider.calendar_for("AAPL")
    ny_days = set(ny.bar_times("1d", s, e))
    skipped = sum(len(set(provider.calendar_for(sym).bar_times("1d", s, e)) - ny_days) for sym in symbols)
    return Row("yahoo_exchanges before: NYSE calendar for all (0.1)", f"{skipped} sessions skipped",
               "0 with own calendars", None, "-", None,
               note="sessions the 20 symbols' own exchanges traded on NYSE holidays, never asked for in 0.1")
