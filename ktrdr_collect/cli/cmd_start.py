"""`collect start`: validate everything, create the job, start its runner, then watch it."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ktrdr_collect.config import load_settings
from ktrdr_collect.errors import InvalidInputError
from ktrdr_collect.inputs import parse_options, read_symbol_lines

if TYPE_CHECKING:
    from ktrdr_collect.jobs.launch import JobRequest


def read_symbol_file(source: str) -> list[str]:
    if source == "-":
        return read_symbol_lines(sys.stdin.read(), "stdin")
    try:
        return read_symbol_lines(Path(source).expanduser().read_text(encoding="utf-8"), source)
    except OSError as e:
        raise InvalidInputError(f"cannot read symbol file {source}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"symbol file {source} is not UTF-8 text") from None


def build_request(
    symbols: list[str], timeframe: str | list[str] | None, start: str | None, end: str | None, days: int | None,
    provider: str | None, options: list[str], workers: int | None, data_dir: Path | None,
    fmt: str | None, name: str | None, file: str | None, refresh: bool = False, executor: str | None = None,
) -> JobRequest:
    """The job `start` asks for: config's defaults under the command line's, planned and checked
    (planning.plan_job, the same plan the Python API makes) before any job folder exists."""
    from ktrdr_collect.jobs.launch import JobRequest
    from ktrdr_collect.planning import plan_job
    from ktrdr_collect.providers.registry import canonical_name

    settings = load_settings()
    texts = list(symbols) + (read_symbol_file(file) if file else [])
    name_ = canonical_name(provider or settings["provider"])
    plan = plan_job(
        texts, timeframe or settings["timeframe"], start, end, days, name_,
        data_dir.expanduser() if data_dir else settings.data_dir,
        default_days=int(settings["default_days"]), options=parse_options(options),
        base_options=settings.provider_options(name_),
        workers=workers if workers is not None else int(settings["workers"]), fmt=fmt or settings["format"], name=name,
    )
    return JobRequest(
        symbols=plan.symbols, timeframe=plan.timeframe, timeframes=plan.timeframes,
        start=plan.start, end=plan.end, provider=plan.provider,
        options=plan.options, public_options=plan.public_options, earliest_ts=plan.earliest_ts, workers=plan.workers,
        data_dir=plan.data_dir, format=plan.format, name=plan.name, synthetic=plan.synthetic, refresh=refresh,
        executor=_checked_executor(executor),
    )


def _checked_executor(value: str | None) -> str | None:
    if value is None:
        return None
    from ktrdr_collect.config import parse_value

    return str(parse_value("executor", value, "--executor"))


def start(
    symbols: list[str] = typer.Argument(None, help="Symbols to collect (AAPL, BRK.B, ^GSPC, BTC/USDT)."),
    timeframe: list[str] = typer.Option(None, "-t", "--timeframe",
                                        help="1m 5m 15m 30m 1h 4h 1d 1w (default 1d); repeat or comma list."),
    start_: str = typer.Option(None, "--start", help="YYYY-MM-DD, ISO date-time, or 'earliest'."),
    end: str = typer.Option(None, "--end", help="YYYY-MM-DD or ISO date-time (default: now)."),
    days: int = typer.Option(None, "--days", help="Start = end - N days (default 365)."),
    provider: str = typer.Option(None, "-p", "--provider", help="Data provider (default demo)."),
    option: list[str] = typer.Option([], "-o", "--option", help="Provider option KEY=VALUE (repeatable)."),
    workers: int = typer.Option(None, "-w", "--workers", help="Parallel workers (default 4)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Where data files go (default <home>/data)."),
    fmt: str = typer.Option(None, "--format", help="csv, or parquet (needs the \\[parquet] extra)."),
    name: str = typer.Option(None, "--name", help="A name for the job."),
    file: str = typer.Option(None, "-f", "--file", help="Symbols from FILE ('-': stdin), by line/comma/space."),
    detach: bool = typer.Option(False, "-d", "--detach", help="Print the job id and return at once."),
    json_: bool = typer.Option(False, "--json", help="NDJSON events on stdout."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Nothing on stdout but the id with -d; errors on stderr."),
    refresh: bool = typer.Option(False, "--refresh", help="Fetch the window again where stored; replace those bars."),
    executor: str = typer.Option(None, "--executor", help="threads, or dask://HOST:PORT (default: config)."),
) -> int:
    """Collect each symbol's bars for the window, fetching only what is missing."""
    req = build_request(symbols or [], timeframe, start_, end, days, provider, option, workers, data_dir,
                        fmt, name, file, refresh, executor)
    from ktrdr_collect.jobs.launch import create_job

    job_id = create_job(req)
    _say_if_queued(job_id, quiet)
    if detach:  # the id is data, not chatter: printed with --quiet too
        print(json.dumps({"id": job_id}) if json_ else job_id, flush=True)
        code = 0
    else:
        from ktrdr_collect.cli.watching import watch_job

        code = watch_job(job_id, json_mode=json_, quiet=quiet, cancel_on_interrupt=True)
        if not (json_ or quiet):  # what was restated, and where the files went (`collect data path` too)
            from ktrdr_collect.jobs.folders import restatements
            from ktrdr_collect.text import clean

            for line in restatements(job_id):
                print(clean(line), flush=True)
            print(f"Data: {data_location(req.data_dir, req.provider, req.timeframe)}", flush=True)
    from ktrdr_collect.jobs.retention import auto_prune

    retention_days = int(load_settings()["retention_days"])
    auto_prune(retention_days)
    if retention_days > 0:  # copies kept by a restatement go with retention, like finished jobs
        import time

        from ktrdr_collect.storage.actions import prune_copies

        with contextlib.suppress(OSError):
            prune_copies(req.data_dir, retention_days * 86400.0, time.time())
    return code


def data_location(root: Path | str, provider: str, timeframe: str) -> str:
    """Where a series' files are: a folder, or (an object store) its URL."""
    from ktrdr_collect.storage.urls import as_url

    url = as_url(root)
    return f"{url}/{provider}/{timeframe}" if url else str(Path(root) / provider / timeframe)


def _say_if_queued(job_id: str, quiet: bool) -> None:
    """A job beyond `max_running_jobs` waits its turn: say so on stderr (stdout stays data)."""
    from ktrdr_collect.jobs.queue import ahead

    position = ahead(job_id)
    if position is not None and not quiet:
        print(f"Job {job_id} queued, {position} ahead (config max_running_jobs); it starts when a slot frees",
              file=sys.stderr, flush=True)


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=False)(start)
