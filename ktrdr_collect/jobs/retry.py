"""`collect retry JOB`: a new job for the series of a finished job that did not complete (failed,
cancelled, never started), with the same provider, options, window, storage and workers. The new
job records `retry_of`, which `show` and `status` display."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ktrdr_collect.errors import InvalidJobStateError
from ktrdr_collect.jobs import model
from ktrdr_collect.jobs.folders import job_folder, load_status
from ktrdr_collect.jobs.launch import JobRequest
from ktrdr_collect.jobs.statefile import read_state


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def retry_request(job_id: str) -> JobRequest:
    """The request for JOB's series that did not complete; refused for a job not finished (an
    interrupted one is continued by `resume`) and for one with nothing left to do."""
    status = load_status(job_id)["status"]
    if status not in model.FINISHED:
        hint = f"; `collect resume {job_id}` continues it" if status == model.INTERRUPTED else ""
        raise InvalidJobStateError(f"Cannot retry {status} job{hint}")
    state = read_state(job_folder(job_id))
    symbols = [e["symbol"] for e in state["symbols"] if e["status"] != "completed"]
    if not symbols:
        raise InvalidJobStateError(f"job {job_id} has nothing to retry: every series completed")
    start = _when(state["start"])
    options = dict(state.get("options") or {})
    return JobRequest(
        symbols=symbols, timeframe=state["timeframe"], start=None if state.get("earliest") else start,
        end=_when(state["end"]), provider=state["provider"], options=options, public_options=options,
        earliest_ts=int(start.timestamp()), workers=int(state.get("workers") or 4),
        data_dir=Path(state["data_dir"]), format=state.get("format") or "csv", name=state.get("name"),
        synthetic=bool(state.get("synthetic")), retry_of=job_id,
    )
