"""History: list, stats, prune."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import typer

from ktrdr_collect.cli import fmt
from ktrdr_collect.cli.tables import print_stream_table, print_table
from ktrdr_collect.config import load_settings
from ktrdr_collect.errors import InvalidInputError
from ktrdr_collect.inputs import MAX_DAYS, normalize_symbol, parse_age
from ktrdr_collect.text import clean, clean_tree

STATUSES = ("pending", "running", "paused", "completed", "failed", "cancelled", "interrupted")
MAX_LIMIT = 1_000_000_000
MAX_AGE_S = MAX_DAYS * 86400.0


def when_iso(text: str | None) -> str | None:
    if text is None:
        return None
    from ktrdr_collect.jobs.folders import iso

    return iso(parse_age(text, datetime.now(UTC)).timestamp())


def list_(
    status_: list[str] = typer.Option([], "--status", help="Only jobs in this status (repeatable)."),
    symbol: str = typer.Option(None, "--symbol", help="Only jobs that include this symbol."),
    provider: str = typer.Option(None, "--provider", help="Only jobs of this provider (any case)."),
    since: str = typer.Option(None, "--since", help="Created at/after WHEN (date or age: 30m, 12h, 7d)."),
    until: str = typer.Option(None, "--until", help="Created at/before WHEN."),
    search: str = typer.Option(None, "--search", help="Text in the job id, name or any symbol."),
    limit: int = typer.Option(None, "--limit", help="At most N jobs."),
    json_: bool = typer.Option(False, "--json", help="JSON array output."),
) -> int:
    """Job history, newest first."""
    from ktrdr_collect.jobs.history import History

    for s in status_:
        if s not in STATUSES:
            raise InvalidInputError(f"unknown status '{s}' (choose from: {', '.join(STATUSES)})")
    if limit is not None and not 0 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"--limit must be between 0 and {MAX_LIMIT:,}")
    if provider:
        from ktrdr_collect.providers.registry import canonical_name

        provider = canonical_name(provider)  # as -p takes it: DEMO is demo
    filters = (status_, normalize_symbol(symbol) if symbol else None, provider, when_iso(since), when_iso(until),
               search, limit)
    year = datetime.now(UTC).year
    with History() as history:
        for err in history.broken:
            typer.echo(f"Warning: {clean(str(err))}", err=True)
        jobs = history.query(*filters)
        if json_:
            print_json_array(job.summary() for job in jobs)
        else:
            # fits 80 columns for typical rows (scripts read --json, which has every field in full)
            print_stream_table(
                ["ID", "STATUS", "PROV", "TF", "SYMS", "CANDLES", "CREATED UTC", "ELAPSED", "NAME"],
                ([j.id, fmt.status_word(j), j.provider, j.timeframes_text, f"{j.symbols_completed}/{j.symbols_total}",
                  fmt.count(j.candles), fmt.when_short(j.created_at, year), fmt.duration(j.elapsed_s),
                  clean(j.name or "")] for j in jobs),
                right=("SYMS", "CANDLES", "ELAPSED"), empty="No jobs.", uncut=("ID", "STATUS", "CREATED UTC"),
            )
    return 0


def print_json_array(rows: Iterable[Any]) -> None:
    """A JSON array written as the rows come (the same text json.dumps(indent=2) gives)."""
    out = sys.stdout
    first = True
    for row in rows:
        item = json.dumps(row, indent=2).replace("\n", "\n  ")
        out.write(("[\n  " if first else ",\n  ") + item)
        first = False
    out.write("[]\n" if first else "\n]\n")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def render_stats(st: dict[str, Any]) -> None:
    period = f"since {fmt.when_utc(st['since'])}" if st["since"] else "all time"
    print(f"Finished jobs ({period}): {st['jobs']}  " + "  ".join(f"{k} {v}" for k, v in st["by_status"].items()))
    print(f"Success rate {_pct(st['success_rate'])} · {fmt.plural(st['symbols_completed'], 'symbol')} collected, "
          f"{fmt.count(st['symbols_failed'])} failed · {fmt.plural(st['candles'], 'candle')} · "
          f"{fmt.plural(st['requests'], 'request')}")
    print(f"Duration mean {fmt.duration(st['duration_mean_s'])}, median {fmt.duration(st['duration_median_s'])} · "
          f"throughput {st['candles_per_s'] or 0:,.0f} candles/s, {st['symbols_per_s'] or 0:.2f} symbols/s")
    if st["providers"]:
        print()
        print_table(
            ["PROVIDER", "JOBS", "SUCCESS", "SYMBOLS", "FAILED", "CANDLES", "MEDIAN"],
            [[name, str(p["jobs"]), _pct(p["success_rate"]), fmt.count(p["symbols_completed"]),
              fmt.count(p["symbols_failed"]), fmt.count(p["candles"]), fmt.duration(p["duration_median_s"])]
             for name, p in st["providers"].items()],
            right=("JOBS", "SUCCESS", "SYMBOLS", "FAILED", "CANDLES", "MEDIAN"),
        )
    if st["top_errors"]:
        print()
        print_table(["COUNT", "MOST FREQUENT ERRORS"], [[str(e["count"]), e["error"]] for e in st["top_errors"]],
                    right=("COUNT",))


def stats(
    since: str = typer.Option(None, "--since", help="Jobs finished at/after WHEN (date or age: 7d, 12h)."),
    json_: bool = typer.Option(False, "--json", help="JSON output."),
) -> int:
    """Analytics over finished jobs: by status, success rate, volume, duration, errors, per provider."""
    from ktrdr_collect.jobs.history import History
    from ktrdr_collect.jobs.stats import compute_stats

    since_iso = when_iso(since)
    with History() as history:
        result = clean_tree(compute_stats(history, since_iso))
    if json_:
        print(json.dumps(result, indent=2))
    else:
        render_stats(result)
    return 0


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise InvalidInputError(f"--older-than: expected an age like 30d, 12h, 90m, got '{text}'")
    unit = match.group(2) or "d"
    seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    if seconds > MAX_AGE_S:
        raise InvalidInputError(f"--older-than: '{text.strip()}' is more than {MAX_DAYS} days")
    return seconds


def prune(
    older_than: str = typer.Option(None, "--older-than", help="Age, e.g. 30d (default: retention_days)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be deleted."),
    json_: bool = typer.Option(False, "--json", help="JSON output."),
) -> int:
    """Delete finished jobs older than AGE. Running jobs are never pruned."""
    from ktrdr_collect.jobs.retention import prune as do_prune

    if older_than:
        seconds = parse_duration(older_than)
    else:
        days = load_settings()["retention_days"]
        if days == 0:
            raise InvalidInputError("retention_days is 0 (keep jobs forever): pass --older-than AGE to prune")
        seconds = days * 86400.0
    removed = do_prune(seconds, dry_run=dry_run)
    if json_:
        print(json.dumps({"dry_run": dry_run, "pruned": removed}, indent=2))
    else:
        verb = "Would delete" if dry_run else "Deleted"
        print(f"{verb} {fmt.plural(len(removed), 'finished job')}" + (": " + " ".join(removed) if removed else ""))
    return 0


def register(app: typer.Typer) -> None:
    app.command("list")(list_)
    app.command()(stats)
    app.command()(prune)
