"""ib_pacing: what IB's pacing means for a job of 100 symbols x 1 year of `1h` bars.

No gateway and no ib_async: the provider is built with a factory that is never called.

* requests planned: the pipeline's planning (`provider.calendar.split(tf, start, end,
  provider.max_bars_for(tf))`, and each segment's reqHistoricalData calls), against the minimum IB's
  step-size table allows (`1h` bars: at most 1 M = 30 days per request, so ceil(365 / 30) = 13 per
  symbol). Aim: equal.
* the job's ETA at start: a ProgressTracker built the way the engine builds it
  (`ProcessingEngine(provider, store).new_tracker(symbols)`, so capped by the shared pacer's
  sustained rate), every symbol planned with its segment count, a few requests recorded on an
  injected clock at the pacer's rate; `snapshot().eta_s` against the pacing lower bound
  requests / (60 per 10 minutes). Aim: within 5%.
* the schedule itself (info): every request booked through the shared pacer (IB's window, 2%
  margin) on an injected clock; when the last one may start, against the same bound. It starts
  with a burst of 60, so it ends a little before requests / (60 per 10 min).
"""

from __future__ import annotations

import math
from typing import Any

from bench._common import Row, fresh_home, log, standalone

SYMBOLS = 100
TF = "1h"
END = "2024-06-01"
DAYS = 365
RECORDED = 5
AIM = 1.05


def _no_gateway() -> Any:
    raise RuntimeError("the benchmark never talks to IB")


def run(quick: bool = False) -> list[Row]:
    from ktrdr_collect import paths
    from ktrdr_collect.engine.engine import ProcessingEngine, to_epoch
    from ktrdr_collect.providers.ib import WINDOW, IbProvider
    from ktrdr_collect.providers.ib_plan import REQUEST_DAYS
    from ktrdr_collect.providers.pacing import MARGIN, SharedPacer
    from ktrdr_collect.storage.csv_store import CsvStore

    symbols = [f"S{i:03d}" for i in range(SYMBOLS)]
    end = to_epoch(END)
    start = end - DAYS * 86400
    rows: list[Row] = []
    with fresh_home() as home:
        provider = IbProvider({}, ib_factory=_no_gateway)
        segments = provider.calendar.split(TF, start, end, provider.max_bars_for(TF))
        per_symbol = sum(len(provider.calendar.requests(TF, *s)) for s in segments)
        planned = per_symbol * SYMBOLS
        minimum = SYMBOLS * math.ceil(DAYS / REQUEST_DAYS[TF])
        log(f"ib_pacing: {len(segments)} segments, {per_symbol} requests per symbol, {planned} in all")
        rows.append(Row(f"ib_pacing requests planned ({SYMBOLS} sym x {DAYS}d {TF})", f"{planned} req",
                        f"table min {minimum} req", planned / minimum, "== 1.0x",
                        planned == minimum and per_symbol == len(segments),
                        note="one reqHistoricalData per segment, 30 D of 1 hour bars each (IB step-size table)"))

        count, span = WINDOW
        bound_rate = count / span  # requests per second IB allows, sustained

        now = [0.0]
        engine = ProcessingEngine(provider, CsvStore(home / "data"), clock=lambda: now[0])
        assert engine.pacer is not None
        tracker = engine.new_tracker(symbols)
        tracker.start()
        for s in symbols:
            tracker.planned(s, per_symbol)
        for i in range(RECORDED):
            now[0] += 1 / engine.pacer.rate
            tracker.request_made(symbols[0])
            tracker.segment_done(symbols[0], 150, requested=True)
            log(f"ib_pacing: after {i + 1} requests at {now[0]:.1f}s, eta {tracker.snapshot().eta_s}")
        eta = tracker.snapshot().eta_s
        remaining = planned - RECORDED
        bound = remaining / bound_rate
        ratio = eta / bound if eta is not None else math.inf
        rows.append(Row(f"ib_pacing ETA at start ({planned} req)", f"{eta / 3600:.3f} h" if eta else "unknown",
                        f"bound {bound / 3600:.3f} h", ratio, f"<= {AIM}x", eta is not None and 1.0 <= ratio <= AIM,
                        note=f"bound = {remaining} remaining requests / (60 per 10 min); the tracker's cap is "
                             f"the pacer's {engine.pacer.rate * 600:.2f} per 10 min ({MARGIN:.0%} margin)"))

        clock = [1_000_000.0]
        pacer = SharedPacer(paths.shared_dir() / "pacing" / "ib-bench.json", provider.rate_windows,
                            clock=lambda: clock[0])
        n = planned if not quick else planned // 4

        def advance(seconds: float) -> bool:  # a sleep on the simulated clock
            clock[0] += seconds
            return True

        for _ in range(n):
            pacer.wait_turn(advance)
        last_start = clock[0] - 1_000_000.0
        sim_bound = n / bound_rate
        rows.append(Row(f"ib_pacing schedule ({n} req through the shared pacer)", f"{last_start / 3600:.3f} h",
                        f"bound {sim_bound / 3600:.3f} h", last_start / sim_bound, "info", None,
                        note="the last request's start; the first 60 go at once, then 60 per 612 s"))
        provider.close()
    return rows


if __name__ == "__main__":
    standalone(run)
