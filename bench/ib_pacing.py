"""ib_pacing: what IB's pacing means for a job of 100 symbols x 1 year of `1h` bars, before and after
pacing by bar size.

No gateway and no ib_async: the provider is built with a factory that is never called. Two
pacings in the same run, on the same plan:

* before: `-o pacing=strict`, IB's hard rules for every bar size (what every job paid until IB's
  documented split by bar size was followed): 60 requests in any 10 minutes, machine-wide;
* after: `pacing=auto` (the default): bars of 1 minute and more are only throttled softly by IB,
  so the job is paced at `SOFT_RATE` (2 requests a second), machine-wide.

Rows:

* requests planned: the pipeline's planning (`provider.calendar.split(tf, start, end,
  provider.max_bars_for(tf))`, and each segment's reqHistoricalData calls), against the minimum IB's
  step-size table allows (`1h` bars: at most 1 M = 30 days per request, so ceil(365 / 30) = 13 per
  symbol). Aim: equal. The same for both pacings (pacing never changes the plan).
* ETA at start, per pacing: a ProgressTracker built the way the engine builds it for the job
  (`ProcessingEngine(provider, store).new_tracker(symbols, "1h")`, so capped by that timeframe's
  shared pacer), every symbol planned with its segment count, a few requests recorded on an
  injected clock at the pacer's rate; `snapshot().eta_s` against the pacing lower bound
  requests / the pace. Aim: within 5%.
* pacing-bound duration, per pacing (info): every request booked through the engine's pacer for
  `1h` (`engine.pacer_of("1h")`: the shared log, 2% margin) on an injected clock; when the last one
  may start, against the same bound. Strict starts with a burst of 60, so it ends a little before
  requests / (60 per 10 min). Soft pacing is rarely what binds a real job: each job sends one
  request at a time, so it goes no faster than IB answers (~1 s a request).
* speed-up (info): before / after, of the pacing-bound durations.
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
PACINGS = (("before", "strict"), ("after", "auto"))


def _no_gateway() -> Any:
    raise RuntimeError("the benchmark never talks to IB")


def _fmt_h(seconds: float) -> str:
    return f"{seconds / 3600:.3f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _planned(provider: Any, start: int, end: int) -> tuple[int, int]:
    """(requests per symbol, segments per symbol) of the pipeline's plan."""
    segments = provider.calendar.split(TF, start, end, provider.max_bars_for(TF))
    return sum(len(provider.calendar.requests(TF, *s)) for s in segments), len(segments)


def _plan_row(provider: Any, start: int, end: int) -> tuple[Row, int]:
    from ktrdr_collect.providers.ib_plan import REQUEST_DAYS

    per_symbol, segments = _planned(provider, start, end)
    planned = per_symbol * SYMBOLS
    minimum = SYMBOLS * math.ceil(DAYS / REQUEST_DAYS[TF])
    log(f"ib_pacing: {segments} segments, {per_symbol} requests per symbol, {planned} in all")
    row = Row(f"ib_pacing requests planned ({SYMBOLS} sym x {DAYS}d {TF})", f"{planned} req",
              f"table min {minimum} req", planned / minimum, "== 1.0x",
              planned == minimum and per_symbol == segments,
              note="one reqHistoricalData per segment, 30 D of 1 hour bars each (IB step-size table); "
                   "the same plan under both pacings")
    return row, per_symbol


def _bound_rate(provider: Any) -> float:
    """Requests per second IB's rule (or our soft pace) allows for the job's bars, before our margin."""
    rate, windows = provider.pacing_for(TF)
    return min(n / span for n, span in windows) if windows else rate


def _eta_row(label: str, provider: Any, home: Any, symbols: list[str], per_symbol: int) -> Row:
    from ktrdr_collect.engine.engine import ProcessingEngine
    from ktrdr_collect.providers.pacing import MARGIN
    from ktrdr_collect.storage.csv_store import CsvStore

    now = [0.0]
    engine = ProcessingEngine(provider, CsvStore(home / "data"), clock=lambda: now[0])
    rate = engine.rate_limit_for(TF)
    assert rate is not None
    tracker = engine.new_tracker(symbols, TF)
    tracker.start()
    for s in symbols:
        tracker.planned(s, per_symbol)
    for _ in range(RECORDED):
        now[0] += 1 / rate
        tracker.request_made(symbols[0])
        tracker.segment_done(symbols[0], 150, requested=True)
    eta = tracker.snapshot().eta_s
    remaining = per_symbol * len(symbols) - RECORDED
    bound = remaining / _bound_rate(provider)
    ratio = eta / bound if eta is not None else math.inf
    log(f"ib_pacing {label}: eta {eta} s, bound {bound:.0f} s")
    return Row(f"ib_pacing {label}: ETA at start ({provider.pacing_mode}, {per_symbol * len(symbols)} req)",
               _fmt_h(eta) if eta else "unknown", f"bound {_fmt_h(bound)}", ratio, f"<= {AIM}x",
               eta is not None and 1.0 <= ratio <= AIM,
               note=f"bound = {remaining} remaining requests / {_bound_rate(provider) * 600:g} per 10 min; "
                    f"the tracker's cap is the {TF} pacer's {rate * 600:.2f} per 10 min ({MARGIN:.0%} margin)")


def _schedule(provider: Any, home: Any, n: int) -> tuple[float, str]:
    """When the last of `n` requests may start through the engine's pacer for the job (seconds):
    the same pacer (`pacer_for` with the provider's pacing for the timeframe) on a simulated clock."""
    from ktrdr_collect.engine.engine import ProcessingEngine
    from ktrdr_collect.providers.pacing import pacer_for
    from ktrdr_collect.storage.csv_store import CsvStore

    clock = [1_000_000.0]
    pacer = pacer_for(provider.name, *provider.pacing_for(TF), default=(provider.rate_limit, provider.rate_windows),
                      clock=lambda: clock[0])
    engine_pacer = ProcessingEngine(provider, CsvStore(home / "data")).pacer_of(TF)
    assert pacer is not None and engine_pacer is not None and pacer.path == engine_pacer.path

    def advance(seconds: float) -> bool:  # a sleep on the simulated clock
        clock[0] += seconds
        return True

    for _ in range(n):
        pacer.wait_turn(advance)
    return clock[0] - 1_000_000.0, pacer.path.name


def run(quick: bool = False) -> list[Row]:
    from ktrdr_collect.engine.engine import to_epoch
    from ktrdr_collect.providers.ib import IbProvider

    symbols = [f"S{i:03d}" for i in range(SYMBOLS)]
    end = to_epoch(END)
    start = end - DAYS * 86400
    rows: list[Row] = []
    durations: dict[str, float] = {}
    with fresh_home() as home:
        plan_row, per_symbol = _plan_row(IbProvider({}, ib_factory=_no_gateway), start, end)
        rows.append(plan_row)
        planned = per_symbol * SYMBOLS
        n = planned if not quick else planned // 4
        for label, pacing in PACINGS:
            provider = IbProvider({"pacing": pacing}, ib_factory=_no_gateway)
            rows.append(_eta_row(label, provider, home, symbols, per_symbol))
            last, log_file = _schedule(provider, home, n)
            durations[label] = last
            sim_bound = n / _bound_rate(provider)
            rows.append(Row(f"ib_pacing {label}: pacing-bound duration ({pacing}, {n} req)", _fmt_h(last),
                            f"bound {_fmt_h(sim_bound)}", last / sim_bound, "info", None,
                            note=f"the last request's start through <home>/shared/pacing/{log_file}"
                                 + ("; the first 60 go at once, then 60 per 612 s" if pacing == "strict" else
                                    "; 2 a second less the 2% margin: a real job is slower, one request at a "
                                    "time as fast as IB answers")))
            provider.close()
        before, after = durations["before"], durations["after"]
        rows.append(Row(f"ib_pacing speed-up, pacing-bound ({n} req of {TF})", f"{_fmt_h(after)} after",
                        f"{_fmt_h(before)} before", before / after, "info", None,
                        note="before = pacing=strict (IB's small-bar rules on every bar size), "
                             "after = pacing=auto (soft pace for bars of 1 min and more)"))
    return rows


if __name__ == "__main__":
    standalone(run)
