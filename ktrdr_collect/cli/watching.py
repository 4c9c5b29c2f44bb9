"""Watching a job until it ends, in the foreground of `start` or from `collect watch`."""

from __future__ import annotations

import sys

from ktrdr_collect.cli.follow import follow
from ktrdr_collect.cli.live import pick_renderer
from ktrdr_collect.errors import EXIT_CTRL_C
from ktrdr_collect.jobs import actions
from ktrdr_collect.text import clean


def watch_job(job_id: str, json_mode: bool = False, quiet: bool = False, cancel_on_interrupt: bool = False) -> int:
    renderer = pick_renderer(json_mode, quiet)
    try:
        status = renderer.run(follow(job_id))
    except KeyboardInterrupt:
        if cancel_on_interrupt:
            print(f"\nCancelling job {job_id} (data stored so far is kept)...", file=sys.stderr)
            try:
                actions.cancel(job_id)
            except Exception as e:  # already finished, or the cancel itself failed: say so
                print(f"Error: {clean(str(e))}", file=sys.stderr)
        else:
            print(f"\nStopped watching; job {job_id} keeps running.", file=sys.stderr)
        return EXIT_CTRL_C
    if cancel_on_interrupt:
        actions.wait_for_runner_exit(job_id)
    return status.exit_code or 0

