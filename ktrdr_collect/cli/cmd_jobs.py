"""Reading jobs: status, show, list, logs."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import typer

from ktrdr_collect import paths
from ktrdr_collect.cli import fmt
from ktrdr_collect.cli.live import public
from ktrdr_collect.errors import StateFileError
from ktrdr_collect.inputs import normalize_symbol, parse_age
from ktrdr_collect.jobs import model
from ktrdr_collect.jobs.folders import iter_statuses, load_status, resolve
from ktrdr_collect.jobs.launch import LOG_FILE


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(highlight=False)


def status_text(st: dict[str, Any]) -> str:
    lines = [
        f"Job {st['id']}" + (f" ({st['name']})" if st.get("name") else "") + f": {st['status']}",
        f"  provider   {fmt.provider_label(st)} · {st['timeframe']} · {fmt.day(st['start'])} → {fmt.day(st['end'])}",
        f"  progress   {st['percent']:.1f}% · {fmt.symbols_line(st)}"
        + (f" · now: {', '.join(st['current_symbols'])}" if st["current_symbols"] else ""),
        f"  data       {fmt.count(st['candles'])} candles · {fmt.count(st['requests'])} requests · "
        f"{st['errors_count']} errors · {st['throttled']} throttled",
        f"  time       elapsed {fmt.duration(st['elapsed_s'])} · eta {fmt.duration(st['eta_s'])} · "
        f"{st['rate_symbols_per_s']:.2f} symbols/s · {st['rate_candles_per_s']:.0f} candles/s",
        f"  created    {fmt.when(st['created_at'])} · started {fmt.when(st['started_at'])} · "
        f"ended {fmt.when(st['completed_at'])}",
    ]
    if st.get("error"):
        lines.append(f"  error      {st['error']}")
    if st["status"] == model.INTERRUPTED:
        lines.append(f"  (its process is gone; `collect resume {st['id']}` continues it)")
    return "\n".join(lines)


def active_statuses() -> tuple[list[dict[str, Any]], list[StateFileError]]:
    found, broken = [], []
    for _, st in iter_statuses():
        if isinstance(st, StateFileError):
            broken.append(st)
        elif st["status"] not in model.FINISHED:
            found.append(st)
    return found, broken


def status(
    job: str = typer.Argument(None, help="Job id, unique prefix, or 'last'. Default: every unfinished job."),
    json_: bool = typer.Option(False, "--json", help="JSON output."),
) -> int:
    """Show a job's progress snapshot, or every job that is not finished."""
    if job is not None:
        st = public(load_status(resolve(job)))
        if json_:
            print_json(st)
        else:
            print(status_text(st))
        return 0
    found, broken = active_statuses()
    if json_:
        print_json([public(s) for s in found])
    elif not found:
        print("No unfinished jobs.")
    else:
        print("\n\n".join(status_text(s) for s in found))
    for err in broken:
        typer.echo(f"Warning: {err}", err=True)
    return 0


def show(
    job: str = typer.Argument(..., help="Job id, unique prefix, or 'last'."),
    json_: bool = typer.Option(False, "--json", help="JSON output."),
) -> int:
    """Status plus a per-symbol table."""
    st = public(load_status(resolve(job)))
    if json_:
        print_json(st)
        return 0
    from rich.table import Table

    out = console()
    out.print(status_text(st))
    table = Table(box=None, pad_edge=False)
    for col in ("SYMBOL", "STATUS", "STAGE", "SEGMENTS", "CANDLES", "REQUESTS", "ERROR"):
        table.add_column(col, justify="right" if col in ("SEGMENTS", "CANDLES", "REQUESTS") else "left")
    for e in st["symbols"]:
        table.add_row(e["symbol"], e["status"], e["stage"], f"{e['segments_done']}/{e['segments_total']}",
                      fmt.count(e["candles"]), str(e.get("requests", 0)), e["error"] or "")
    out.print()
    out.print(table)
    return 0


def _matches(st: dict[str, Any], statuses: list[str], symbol: str | None, provider: str | None,
             since: datetime | None, until: datetime | None, search: str | None) -> bool:
    if statuses and st["status"] not in statuses:
        return False
    symbols = [e["symbol"] for e in st.get("symbols", [])]
    if symbol and symbol not in symbols:
        return False
    if provider and st["provider"] != provider:
        return False
    created = datetime.fromisoformat(st["created_at"])
    if since and created < since:
        return False
    if until and created > until:
        return False
    if search:
        needle = search.lower()
        hay = [st["id"], st.get("name") or "", *symbols]
        if not any(needle in h.lower() for h in hay):
            return False
    return True


def list_(
    status_: list[str] = typer.Option([], "--status", help="Only jobs in this status (repeatable)."),
    symbol: str = typer.Option(None, "--symbol", help="Only jobs that include this symbol."),
    provider: str = typer.Option(None, "--provider", help="Only jobs of this provider."),
    since: str = typer.Option(None, "--since", help="Created at/after WHEN (date or age: 30m, 12h, 7d)."),
    until: str = typer.Option(None, "--until", help="Created at/before WHEN."),
    search: str = typer.Option(None, "--search", help="Text in the job id, name or any symbol."),
    limit: int = typer.Option(None, "--limit", help="At most N jobs."),
    json_: bool = typer.Option(False, "--json", help="JSON array output."),
) -> int:
    """Job history, newest first."""
    valid = ("pending", "running", "paused", "completed", "failed", "cancelled", "interrupted")
    for s in status_:
        if s not in valid:
            from ktrdr_collect.errors import InvalidInputError

            raise InvalidInputError(f"unknown status '{s}' (choose from: {', '.join(valid)})")
    now = datetime.now(UTC)
    since_dt = parse_age(since, now) if since else None
    until_dt = parse_age(until, now) if until else None
    sym = normalize_symbol(symbol) if symbol else None
    rows: list[dict[str, Any]] = []
    for _, st in iter_statuses():
        if isinstance(st, StateFileError):
            typer.echo(f"Warning: {st}", err=True)
            continue
        if _matches(st, status_, sym, provider, since_dt, until_dt, search):
            rows.append({k: v for k, v in public(st).items() if k != "symbols"})
            if limit is not None and len(rows) >= limit:
                break
    if json_:
        print_json(rows)
        return 0
    if not rows:
        print("No jobs.")
        return 0
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("ID", "STATUS", "PROVIDER", "TF", "SYMBOLS", "CANDLES", "CREATED", "ELAPSED", "NAME"):
        table.add_column(col, justify="right" if col in ("SYMBOLS", "CANDLES", "ELAPSED") else "left")
    for r in rows:
        table.add_row(r["id"], r["status"], r["provider"], r["timeframe"],
                      f"{r['symbols_completed']}/{r['symbols_total']}", fmt.count(r["candles"]),
                      fmt.when(r["created_at"]), fmt.duration(r["elapsed_s"]), r.get("name") or "")
    console().print(table)
    return 0


def logs(
    job: str = typer.Argument(..., help="Job id, unique prefix, or 'last'."),
    follow_: bool = typer.Option(False, "-f", "--follow", help="Keep printing until the job ends."),
) -> int:
    """The job's log: state changes, per-symbol results, retries, errors."""
    job_id = resolve(job)
    path = paths.job_dir(job_id) / LOG_FILE
    offset = 0
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            end = chunk.rfind(b"\n") + 1 if follow_ else len(chunk)
            print(chunk[:end].decode("utf-8", "replace"), end="", flush=True)
            offset += end
        if not follow_:
            return 0
        st = load_status(job_id)
        if st["status"] in model.FINISHED or st["status"] == model.INTERRUPTED:
            follow_ = False  # one more read picks up the last lines
            continue
        time.sleep(0.2)


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(show)
    app.command("list")(list_)
    app.command()(logs)
