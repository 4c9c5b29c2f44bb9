"""`collect retry JOB`: a new job for a finished job's failed, cancelled and never-started series."""

from __future__ import annotations

import json

import typer


def retry(
    job: str = typer.Argument(..., help="Job id, unique prefix, unique name, or 'last'."),
    detach: bool = typer.Option(False, "-d", "--detach", help="Print the new job's id and return at once."),
    json_: bool = typer.Option(False, "--json", help="NDJSON events on stdout (with -d: the id as JSON)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Nothing on stdout but the id with -d; errors on stderr."),
) -> int:
    """A new job for JOB's failed, cancelled and never-started series (same provider, options, window)."""
    from ktrdr_collect.cli.cmd_start import _say_if_queued
    from ktrdr_collect.jobs.folders import resolve
    from ktrdr_collect.jobs.launch import create_job
    from ktrdr_collect.jobs.retry import retry_request

    job_id = create_job(retry_request(resolve(job)))
    _say_if_queued(job_id, quiet)
    if detach:  # as `start -d`: the id is data
        print(json.dumps({"id": job_id}) if json_ else job_id, flush=True)
        return 0
    from ktrdr_collect.cli.watching import watch_job

    return watch_job(job_id, json_mode=json_, quiet=quiet, cancel_on_interrupt=True)


def register(app: typer.Typer) -> None:
    app.command()(retry)
