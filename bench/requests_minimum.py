"""requests_minimum: requests made vs the minimum sum(ceil(bars / max_bars)) per symbol.

bars = DEMO_CALENDAR.count(tf, start, end_clamped), end_clamped = min(end, now - one bar) as the
pipeline does. Latency 0, fresh data dir per configuration. Also an incremental case: collect a
window, extend its end by a year, collect again — the minimum is then the requests for the new
year alone; and a re-run of the same window, whose minimum is 0.
Aim: made <= 1.05 x minimum.
"""

from __future__ import annotations

import math
import time

from bench._common import Row, fresh_home, log, standalone

AIM = 1.05


def epoch(text: str) -> int:
    from ktrdr_collect.engine.engine import to_epoch

    return to_epoch(text)


def minimum(tf: str, start: str, end: str, max_bars: int, n_symbols: int, covered_until: str | None = None) -> int:
    from ktrdr_collect.storage.calendar import DEMO_CALENDAR
    from ktrdr_collect.storage.timeframes import timeframe_seconds

    s = epoch(covered_until) if covered_until else epoch(start)
    e = min(epoch(end), int(time.time()) - timeframe_seconds(tf))
    bars = DEMO_CALENDAR.count(tf, s, e)
    return n_symbols * math.ceil(bars / max_bars)


def collect(home, tf: str, start: str, end: str, max_bars: int, syms: list[str]) -> int:
    from ktrdr_collect.engine.engine import ProcessingEngine
    from ktrdr_collect.providers.demo import DemoProvider
    from ktrdr_collect.storage.csv_store import CsvStore

    engine = ProcessingEngine(DemoProvider({"latency_ms": 0, "max_bars": max_bars}), CsvStore(home / "data"),
                              workers=4)
    results = engine.process_batch(syms, tf, start=start, end=end)
    assert all(r.ok for r in results)
    return sum(r.requests for r in results)


CONFIGS = [
    # label, tf, start, end, max_bars
    ("1d 10y max_bars=1000", "1d", "2014-01-01", "2024-01-01", 1000),
    ("1h 3y max_bars=500", "1h", "2021-01-01", "2024-01-01", 500),
]


def run(quick: bool = False) -> list[Row]:
    n = 5 if quick else 20
    syms = [f"R{i:03d}" for i in range(n)]
    rows = []
    for label, tf, start, end, mb in CONFIGS:
        with fresh_home() as home:
            made = collect(home, tf, start, end, mb, syms)
            rerun = collect(home, tf, start, end, mb, syms)
        need = minimum(tf, start, end, mb, n)
        log(f"requests_minimum {label}: made {made}, minimum {need}; re-run made {rerun}")
        rows.append(Row(f"requests_minimum {label} ({n} sym)", f"{made} req", f"min {need} req", made / need,
                        f"<= {AIM}x", made <= AIM * need))
        rows.append(Row(f"requests_minimum {label} re-run", f"{rerun} req", "min 0 req", None,
                        "== 0", rerun == 0))
    # incremental: 2010..2020, then 2010..2021
    with fresh_home() as home:
        collect(home, "1d", "2010-01-01", "2020-01-01", 1000, syms)
        made = collect(home, "1d", "2010-01-01", "2021-01-01", 1000, syms)
    need = minimum("1d", "2010-01-01", "2021-01-01", 1000, n, covered_until="2020-01-01")
    log(f"requests_minimum extend +1y: made {made}, minimum {need}")
    rows.append(Row(f"requests_minimum 1d extend 10y->11y ({n} sym)", f"{made} req", f"min {need} req",
                    made / need, f"<= {AIM}x", made <= AIM * need))
    return rows


if __name__ == "__main__":
    standalone(run)
