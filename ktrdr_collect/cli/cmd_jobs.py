"""Reading jobs: status, show, list, logs."""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from ktrdr_collect.cli import fmt
from ktrdr_collect.cli.tables import print_table
from ktrdr_collect.errors import StateFileError
from ktrdr_collect.jobs import model
from ktrdr_collect.jobs.folders import LOG_FILE, job_folder, load_status, resolve
from ktrdr_collect.jobs.record import JobState
from ktrdr_collect.text import clean


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def now_line(st: JobState) -> str:
    """The series in progress; one waiting for another job's range says for which."""
    waiting = {e.name(st.several).replace(" ", "@"): e.stage_label for e in st.symbols if e.stage == "waiting"}
    return ", ".join(f"{s} ({waiting[s]})" if s in waiting else s for s in st.current_symbols)


def status_text(st: JobState) -> str:
    lines = [
        f"Job {st.id}" + (f" ({st.name})" if st.name else "") + f": {st.status}"
        + (f" (queued, {st.queue_ahead} ahead)" if st.queue_ahead is not None else ""),
        f"  provider   {fmt.provider_label(st)} · {st.timeframes_text} · {fmt.day(st.start)} → {fmt.day(st.end)}",
        f"  progress   {st.percent:.1f}% · {fmt.symbols_line(st)}"
        + (f" · now: {now_line(st)}" if st.current_symbols else ""),
        f"  data       {fmt.plural(st.candles, 'candle')} · {fmt.plural(st.requests, 'request')} · "
        f"{fmt.plural(st.errors_count, 'error')} · {st.throttled} throttled",
        f"  time       elapsed {fmt.duration(st.elapsed_s)} · eta {fmt.eta(st)} · "
        f"{st.rate_symbols_per_s:.2f} symbols/s · {st.rate_candles_per_s:.0f} candles/s",
        f"  created    {fmt.when_utc(st.created_at)} · started {fmt.when(st.started_at)} · "
        f"ended {fmt.when(st.completed_at)}",
    ]
    if st.health is not None:
        reasons = "; ".join(st.health["reasons"])
        lines.append(f"  health     {st.health['word']}" + (f" ({reasons})" if reasons else ""))
    if st.retry_of:
        lines.append(f"  retry of   {st.retry_of}")
    if st.error:
        lines.append(f"  error      {st.error}")
    if st.status == model.INTERRUPTED:
        lines.append(f"  (its process is gone; `collect resume {st.id}` continues it)")
    return clean("\n".join(lines), keep_newlines=True)


def active_statuses() -> tuple[list[JobState], list[StateFileError]]:
    from ktrdr_collect.jobs.history import History

    with History() as history:
        found = sorted(history.live, key=lambda s: s.id, reverse=True)  # ids follow the creation sequence
        return found, history.broken


def status(
    job: str = typer.Argument(None, help="Job id, unique prefix, unique name, or 'last'. Default: every "
                                         "unfinished job."),
    json_: bool = typer.Option(False, "--json", help="JSON output."),
) -> int:
    """Show a job's progress snapshot, or every job that is not finished."""
    if job is not None:
        st = load_status(resolve(job))
        if json_:
            print_json(st.public())
        else:
            print(status_text(st))
        return 0
    found, broken = active_statuses()
    if json_:
        print_json([s.public() for s in found])
    elif not found:
        print("No unfinished jobs.")
    else:
        print("\n\n".join(status_text(s) for s in found))
    for err in broken:
        typer.echo(f"Warning: {clean(str(err))}", err=True)
    return 0


def show(
    job: str = typer.Argument(..., help="Job id, unique prefix, unique name, or 'last'."),
    json_: bool = typer.Option(False, "--json", help="JSON output."),
) -> int:
    """Status plus a per-symbol table."""
    st = load_status(resolve(job))
    if json_:
        print_json(st.public())
        return 0
    print(status_text(st))
    print()
    rows = [[e.symbol, e.timeframe or st.timeframe, e.label, e.stage_label, f"{e.segments_done}/{e.segments_total}",
             fmt.count(e.candles), str(e.requests), clean(e.error or "")] for e in st.symbols]
    headers = ["SYMBOL", "TF", "STATUS", "STAGE", "SEGMENTS", "CANDLES", "REQUESTS", "ERROR"]
    if not st.several:  # one timeframe: the header line says which
        headers.pop(1)
        rows = [row[:1] + row[2:] for row in rows]
    print_table(headers, rows, right=("SEGMENTS", "CANDLES", "REQUESTS"))
    return 0


def logs(
    job: str = typer.Argument(..., help="Job id, unique prefix, unique name, or 'last'."),
    follow_: bool = typer.Option(False, "-f", "--follow", help="Keep printing until the job ends."),
) -> int:
    """The job's log: state changes, per-symbol results, retries, errors."""
    job_id = resolve(job)
    path = job_folder(job_id) / LOG_FILE  # refused if another user's
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
            print(clean(chunk[:end].decode("utf-8", "replace"), keep_newlines=True), end="", flush=True)
            offset += end
        if not follow_:
            return 0
        if load_status(job_id).over:
            follow_ = False  # one more read picks up the last lines
            continue
        time.sleep(0.2)


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(show)
    app.command()(logs)
