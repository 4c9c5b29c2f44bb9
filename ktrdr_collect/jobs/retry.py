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
from ktrdr_collect.jobs.record import read_spec


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def retry_request(job_id: str) -> JobRequest:
    """The request for JOB's series that did not complete; refused for a job not finished (an
    interrupted one is continued by `resume`) and for one with nothing left to do."""
    status = load_status(job_id)
    if not status.finished:
        hint = f"; `collect resume {job_id}` continues it" if status.status == model.INTERRUPTED else ""
        raise InvalidJobStateError(f"Cannot retry {status.status} job{hint}")
    spec = read_spec(job_folder(job_id), status)
    todo = [e for e in status.symbols if e.status != "completed"]
    symbols = list(dict.fromkeys(e.symbol for e in todo))
    timeframes = [tf for tf in spec.all_timeframes if any((e.timeframe or spec.timeframe) == tf for e in todo)]
    if not symbols:
        raise InvalidJobStateError(f"job {job_id} has nothing to retry: every series completed")
    start = _when(spec.start)
    return JobRequest(
        symbols=symbols, timeframe=timeframes[0] if timeframes else spec.timeframe,
        timeframes=tuple(timeframes), start=None if spec.earliest else start, end=_when(spec.end),
        provider=spec.provider, options=dict(spec.options), public_options=dict(spec.options),
        earliest_ts=int(start.timestamp()), workers=spec.workers, data_dir=Path(spec.data_dir), format=spec.format,
        name=spec.name, synthetic=spec.synthetic, retry_of=job_id, refresh=spec.refresh,
        executor=spec.executor,
    )
