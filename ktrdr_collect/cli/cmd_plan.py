"""`collect plan`: what `start` would do, without starting a job — per series the missing ranges
and the requests that fill them, and how long that takes under the provider's pacing."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import typer

from ktrdr_collect.cli import fmt
from ktrdr_collect.cli.tables import print_table


def make_plan(symbols: list[str], timeframe: str | list[str] | None, start: str | None, end: str | None,
              days: int | None, provider: str | None, option: list[str], workers: int | None, data_dir: Path | None,
              fmt_: str | None, file: str | None, now: float | None = None, refresh: bool = False) -> dict[str, Any]:
    """The plan as data (what `--json` prints): the same checks as `start`, then each series'
    gaps against what is stored."""
    from ktrdr_collect.cli.cmd_start import build_request
    from ktrdr_collect.engine.planner import paced_duration, plan_series
    from ktrdr_collect.jobs.folders import iso_seconds
    from ktrdr_collect.providers.registry import create_provider
    from ktrdr_collect.storage.open import open_store

    req = build_request(symbols, timeframe, start, end, days, provider, option, workers, data_dir, fmt_, None, file)
    now = time.time() if now is None else now
    source = create_provider(req.provider, req.options)
    try:
        store = open_store(req.format, req.data_dir)
        first = int(req.start.timestamp()) if req.start is not None else req.earliest_ts
        last = int(req.end.timestamp())
        head = 1 if req.start is None and source.head_timestamp_is_request else 0
        series = []
        paced = 0.0
        rate, windows = source.pacing_for(req.timeframe)
        for tf in req.timeframes or (req.timeframe,):  # the job runs its timeframes one after the other
            counts = []
            for symbol in req.symbols:
                sp = plan_series(source, store, tf, symbol, first, last, now, refresh=refresh)
                counts.append(len(sp.segments) + head)
                series.append({
                    "provider": req.provider, "timeframe": tf, "symbol": symbol,
                    "missing": [[iso_seconds(a), iso_seconds(b)] for a, b in sp.missing],
                    "requests": counts[-1],
                })
            rate_tf, windows_tf = source.pacing_for(tf)
            paced += paced_duration(sum(counts), rate_tf, windows_tf)
        latency = source.expected_latency_s
    finally:
        source.close()
    requests = sum(s["requests"] for s in series)
    duration = None
    if latency is not None:  # the pacing, or the workers' latency, whichever binds; then the last answer
        duration = round(max(paced, math.ceil(requests / req.workers) * latency - latency) + latency, 3) \
            if requests else 0.0
    elif rate or windows:
        duration = round(paced, 3)
    return {
        "provider": req.provider, "timeframe": req.timeframe, "timeframes": list(req.timeframes or (req.timeframe,)),
        "start": iso_seconds(first), "end": iso_seconds(last),
        "workers": req.workers, "series": series, "requests": requests, "duration_s": duration,
        "rate_limit": rate, "rate_windows": [list(w) for w in windows] if windows else None,
    }


def plan(
    symbols: list[str] = typer.Argument(None, help="Symbols, as for start."),
    timeframe: list[str] = typer.Option(None, "-t", "--timeframe", help="As for start: repeat or comma list."),
    start_: str = typer.Option(None, "--start", help="YYYY-MM-DD, ISO date-time, or 'earliest'."),
    end: str = typer.Option(None, "--end", help="YYYY-MM-DD or ISO date-time (default: now)."),
    days: int = typer.Option(None, "--days", help="Start = end - N days (default 365)."),
    provider: str = typer.Option(None, "-p", "--provider", help="Data provider (default demo)."),
    option: list[str] = typer.Option([], "-o", "--option", help="Provider option KEY=VALUE (repeatable)."),
    workers: int = typer.Option(None, "-w", "--workers", help="Parallel workers (default 4)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Where data files go (default <home>/data)."),
    fmt_: str = typer.Option(None, "--format", help="csv, or parquet (needs the \\[parquet] extra)."),
    file: str = typer.Option(None, "-f", "--file", help="Symbols from FILE ('-': stdin), by line/comma/space."),
    json_: bool = typer.Option(False, "--json", help="JSON output."),
    refresh: bool = typer.Option(False, "--refresh", help="As start --refresh: the whole window again."),
) -> int:
    """What start would do, without starting a job: missing ranges, requests, duration."""
    p = make_plan(symbols or [], timeframe, start_, end, days, provider, option, workers, data_dir, fmt_, file,
                  refresh=refresh)
    if json_:
        print(json.dumps(p, indent=2))
        return 0
    print(f"Plan: {p['provider']} · {','.join(p['timeframes'])} · {fmt.day(p['start'])} → {fmt.day(p['end'])} · "
          f"{fmt.count(len(p['series']))} series")
    print_table(
        ["SYMBOL", "TF", "MISSING", "RANGES", "REQUESTS"],
        [[s["symbol"], s["timeframe"], _span(s["missing"]), str(len(s["missing"])), fmt.count(s["requests"])]
         for s in p["series"]],
        right=("RANGES", "REQUESTS"),
    )
    pacing = _pacing(p)
    took = "" if p["duration_s"] is None else f" · about {fmt.duration(p['duration_s'])}"
    print(f"Total: {fmt.plural(p['requests'], 'request')}{took} ({pacing}, {fmt.plural(p['workers'], 'worker')})")
    return 0


def _span(missing: list[list[str]]) -> str:
    if not missing:
        return "— (stored)"
    return f"{fmt.day(missing[0][0])} → {fmt.day(missing[-1][1])}"


def _pacing(p: dict[str, Any]) -> str:
    parts = []
    if p["rate_limit"]:
        parts.append(f"{p['rate_limit']:g} requests/s")
    for count, span in p["rate_windows"] or ():
        parts.append(f"{count} per {span:g} s")
    return "paced at " + ", ".join(parts) if parts else "no pacing"


def register(app: typer.Typer) -> None:
    app.command()(plan)
