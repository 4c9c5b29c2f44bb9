"""`collect start`: validate everything, create the job, start its runner, then watch it."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ktrdr_collect.config import load_settings
from ktrdr_collect.errors import InvalidInputError, UsageError
from ktrdr_collect.inputs import parse_options, parse_symbols, read_symbol_lines, resolve_window
from ktrdr_collect.storage.open import open_store
from ktrdr_collect.storage.timeframes import TIMEFRAMES

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
    symbols: list[str], timeframe: str | None, start: str | None, end: str | None, days: int | None,
    provider: str | None, options: list[str], workers: int | None, data_dir: Path | None,
    fmt: str | None, name: str | None, file: str | None,
) -> JobRequest:
    settings = load_settings()
    texts = list(symbols) + (read_symbol_file(file) if file else [])
    if not texts:
        raise UsageError("no symbols given (pass SYMBOL... or -f FILE)")
    symbol_list = parse_symbols(texts)
    timeframe = timeframe or settings["timeframe"]
    if timeframe not in TIMEFRAMES:
        raise InvalidInputError(f"unknown timeframe '{timeframe}' (choose from: {' '.join(TIMEFRAMES)})")
    start_dt, end_dt = resolve_window(start, end, days, int(settings["default_days"]), datetime.now(UTC),
                                    timeframe)
    from ktrdr_collect.providers.registry import canonical_name, provider_class

    name_ = canonical_name(provider or settings["provider"])
    cls = provider_class(name_)
    if timeframe not in cls.timeframes:
        raise InvalidInputError(f"provider {name_} has no {timeframe} bars (it has: {' '.join(cls.timeframes)})")
    from ktrdr_collect.providers.base import reject_secret_options

    cli_options = parse_options(options)
    reject_secret_options(cls, cli_options)
    merged = {**settings.provider_options(name_), **cli_options}
    try:
        instance = cls(merged)
    except ValueError as e:
        raise InvalidInputError(f"provider {name_}: {e}") from None
    try:
        earliest = instance.earliest(timeframe)
        public = instance.public_options()
        window_start = int(start_dt.timestamp()) if start_dt is not None else earliest
        try:
            instance.check_window(timeframe, window_start, int(end_dt.timestamp()), int(datetime.now(UTC).timestamp()))
        except ValueError as e:
            raise InvalidInputError(f"provider {name_}: {e}") from None
    finally:
        instance.close()
    from ktrdr_collect.jobs.launch import JobRequest

    workers = workers if workers is not None else int(settings["workers"])
    if not 1 <= workers <= 256:
        raise InvalidInputError(f"--workers must be between 1 and 256, got {workers}")
    fmt = fmt or settings["format"]
    root = (data_dir.expanduser() if data_dir else settings.data_dir).resolve()
    open_store(fmt, root)
    if name is not None and not name.strip():
        raise InvalidInputError("--name must not be empty")
    return JobRequest(
        symbols=symbol_list, timeframe=timeframe, start=start_dt, end=end_dt, provider=name_,
        options=merged, public_options=public, earliest_ts=earliest, workers=workers, data_dir=root,
        format=fmt, name=name, synthetic=cls.synthetic,
    )


def start(
    symbols: list[str] = typer.Argument(None, help="Symbols to collect (AAPL, BRK.B, ^GSPC, BTC/USDT)."),
    timeframe: str = typer.Option(None, "-t", "--timeframe", help="1m 5m 15m 30m 1h 4h 1d 1w (default 1d)."),
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
) -> int:
    """Collect each symbol's bars for the window, fetching only what is missing."""
    req = build_request(symbols or [], timeframe, start_, end, days, provider, option, workers, data_dir,
                        fmt, name, file)
    from ktrdr_collect.jobs.launch import create_job

    job_id = create_job(req)
    _say_if_queued(job_id, quiet)
    if detach:  # the id is data, not chatter: printed with --quiet too
        print(json.dumps({"id": job_id}) if json_ else job_id, flush=True)
        code = 0
    else:
        from ktrdr_collect.cli.watching import watch_job

        code = watch_job(job_id, json_mode=json_, quiet=quiet, cancel_on_interrupt=True)
    from ktrdr_collect.jobs.retention import auto_prune

    auto_prune(int(load_settings()["retention_days"]))
    return code


def _say_if_queued(job_id: str, quiet: bool) -> None:
    """A job beyond `max_running_jobs` waits its turn: say so on stderr (stdout stays data)."""
    from ktrdr_collect.jobs.queue import ahead

    position = ahead(job_id)
    if position is not None and not quiet:
        print(f"Job {job_id} queued, {position} ahead (config max_running_jobs); it starts when a slot frees",
              file=sys.stderr, flush=True)


def register(app: typer.Typer) -> None:
    app.command(no_args_is_help=False)(start)
