"""Acting on jobs from any process: pause, resume, cancel, wait, watch."""

from __future__ import annotations

import json
import math
import sys

import typer

from ktrdr_collect.cli import fmt
from ktrdr_collect.cli.cmd_jobs import status_text
from ktrdr_collect.errors import EXIT_TIMEOUT, InvalidInputError
from ktrdr_collect.jobs import actions
from ktrdr_collect.jobs.folders import resolve
from ktrdr_collect.jobs.record import JobState

JOB_HELP = "Job id, unique prefix, unique name, or 'last'."


def _report(st: JobState, json_: bool) -> int:
    if json_:
        print(json.dumps(st.public(), indent=2))
    else:
        print(status_text(st))
    return 0


def pause(job: str = typer.Argument(..., help=JOB_HELP),
          json_: bool = typer.Option(False, "--json", help="JSON output.")) -> int:
    """Stop starting new requests (within 1 s); requests in flight finish and are saved."""
    return _report(actions.pause(resolve(job)), json_)


def resume(job: str = typer.Argument(..., help=JOB_HELP),
           json_: bool = typer.Option(False, "--json", help="JSON output.")) -> int:
    """Continue a paused job, or restart an interrupted one in the background."""
    return _report(actions.resume(resolve(job)), json_)


def cancel(job: str = typer.Argument(..., help=JOB_HELP),
           json_: bool = typer.Option(False, "--json", help="JSON output.")) -> int:
    """Stop a job for good; stored data stays."""
    return _report(actions.cancel(resolve(job)), json_)


def wait(job: str = typer.Argument(..., help=JOB_HELP),
         timeout: float = typer.Option(None, "--timeout", help="Give up after SECONDS (exit 124)."),
         quiet: bool = typer.Option(False, "-q", "--quiet", help="No summary line; the exit code only.")) -> int:
    """Block until the job ends; print its one-line summary; exit with the job's exit code."""
    if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
        raise InvalidInputError(f"--timeout must be a number of seconds >= 0, got {timeout}")
    job_id = resolve(job)
    st = actions.wait(job_id, timeout)
    if st is None:
        if not quiet:
            now = actions.quick_status(job_id)
            print(f"Job {job_id} still {now.status} after {timeout:g} s: {fmt.progress_line(now)}",
                  file=sys.stderr, flush=True)
        return EXIT_TIMEOUT
    if not quiet:
        print(fmt.summary_line(st), flush=True)
    return st.exit_code or 0


def watch(job: str = typer.Argument(..., help=JOB_HELP),
          json_: bool = typer.Option(False, "--json", help="NDJSON events instead of bars.")) -> int:
    """Live progress of a job started elsewhere; Ctrl-C stops watching, not the job."""
    from ktrdr_collect.cli.watching import watch_job

    return watch_job(resolve(job), json_mode=json_)


def register(app: typer.Typer) -> None:
    for fn in (pause, resume, cancel, wait, watch):
        app.command()(fn)
