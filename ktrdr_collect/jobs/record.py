"""The job record: what a job is (`JobSpec`, fixed at creation, in job.json) and where it stands
(`JobState`, in state.json) — the one module that knows the state file's keys.

A job's status changes only through `JobState`'s methods, which check the state machine
(`model.TRANSITIONS`) and set their own timestamps; a refused change raises InvalidJobStateError.
`public()` is what users' scripts see (`status --json`, the NDJSON events): exactly the contract's
keys plus the documented additions (`PUBLIC_ADDITIONS`), outside text cleaned.

Folders written by older versions still read: a state.json without job.json carries the spec's
fields itself (`JobSpec.from_state`), and keys this version does not know are kept as they are
(`JobState.extra`) and written back unchanged.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ktrdr_collect import files
from ktrdr_collect.errors import InvalidJobStateError, StateFileError
from ktrdr_collect.jobs import model
from ktrdr_collect.text import clean, clean_tree

SPEC_FILE = "job.json"

CONTRACT_KEYS = (
    "schema", "id", "name", "status", "provider", "timeframe", "start", "end", "created_at", "started_at",
    "updated_at", "completed_at", "symbols_total", "symbols_completed", "symbols_failed", "percent", "candles",
    "requests", "current_symbols", "elapsed_s", "rate_symbols_per_s", "rate_candles_per_s", "eta_s",
    "errors_count", "throttled", "symbols", "timeframes",
)
"""CONTRACT.md, "Status snapshot"."""
PUBLIC_ADDITIONS = ("error", "exit_code", "retry_of", "queue_ahead", "health", "health_reasons")
"""Documented in docs/jobs.md ("Status additions"): why a job stopped, its exit code, the job it
retries, its place in the queue, and its health (jobs.health)."""
SYMBOL_KEYS = ("symbol", "timeframe", "status", "stage", "segments_done", "segments_total", "candles", "error")
SYMBOL_ADDITIONS = ("requests", "waiting_for")
"""`waiting_for` only while the series waits for another job's claimed range."""

SYMBOL_PENDING, SYMBOL_RUNNING, SYMBOL_CANCELLED = "pending", "running", "cancelled"
SYMBOL_COMPLETED, SYMBOL_FAILED = "completed", "failed"
SYMBOL_FINISHED = frozenset({SYMBOL_COMPLETED, SYMBOL_FAILED})


# -- the spec --------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobSpec:
    """What the job collects, where and how: decided before the folder exists, never changed."""

    symbols: tuple[str, ...]
    timeframe: str
    start: str
    """ISO 8601 UTC (seconds); with `earliest`, the provider's first bar when the job was made."""
    end: str
    provider: str
    earliest: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    """The provider options as recorded (secrets never: they come from config or the environment)."""
    data_dir: str = ""
    format: str = "csv"
    workers: int = 4
    name: str | None = None
    synthetic: bool = False
    retry_of: str | None = None
    refresh: bool = False
    """Fetch the window again where it is stored and replace those bars (`start --refresh`)."""
    executor: str | None = None
    """Where the series run: `threads`, `dask://HOST:PORT`; None: config `executor` at each (re)start."""
    timeframes: tuple[str, ...] = ()
    """Every timeframe of the job, `timeframe` first (a folder from before several timeframes: empty)."""

    @property
    def all_timeframes(self) -> tuple[str, ...]:
        return self.timeframes or (self.timeframe,)

    @property
    def several(self) -> bool:
        """More than one timeframe: the job's units are keyed `SYMBOL@TF` (engine/units.py)."""
        return len(self.all_timeframes) > 1

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["symbols"] = list(self.symbols)
        out["timeframes"] = list(self.timeframes)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobSpec:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["symbols"] = tuple(values.get("symbols") or ())
        values["timeframes"] = tuple(values.get("timeframes") or ())
        values["options"] = dict(values.get("options") or {})
        values["workers"] = int(values.get("workers") or 4)
        values["format"] = values.get("format") or "csv"
        values["earliest"] = bool(values.get("earliest"))
        values["synthetic"] = bool(values.get("synthetic"))
        values["refresh"] = bool(values.get("refresh"))
        return cls(**values)

    @classmethod
    def from_state(cls, state: JobState) -> JobSpec:
        """The spec of a folder written before job.json existed: its fields were in state.json."""
        extra = state.extra
        return cls.from_json({
            **extra, "symbols": [e.symbol for e in state.symbols], "timeframe": state.timeframe,
            "start": state.start, "end": state.end, "provider": state.provider, "name": state.name,
            "retry_of": state.retry_of, "synthetic": state.synthetic,
        })

    def write(self, folder: Path) -> None:
        payload = json.dumps(self.to_json(), indent=1, sort_keys=True).encode() + b"\n"
        files.atomic_write(folder / SPEC_FILE, payload, mode=files.PRIVATE_FILE_MODE, durable=True)


def read_spec(folder: Path, state: JobState) -> JobSpec:
    """job.json, or (an older folder) the spec carried by its state."""
    try:
        data = json.loads((folder / SPEC_FILE).read_bytes())
    except FileNotFoundError:
        return JobSpec.from_state(state)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise StateFileError(f"job {folder.name}: {SPEC_FILE} is unreadable ({e})") from None
    if not isinstance(data, dict):
        raise StateFileError(f"job {folder.name}: {SPEC_FILE} is corrupt")
    return JobSpec.from_json(data)


# -- per-symbol entries ----------------------------------------------------------------------
@dataclass(slots=True)
class SymbolEntry:
    symbol: str
    status: str = SYMBOL_PENDING
    stage: str = "validating"
    segments_done: int = 0
    segments_total: int = 0
    candles: int = 0
    requests: int = 0
    error: str | None = None
    timeframe: str | None = None
    waiting_for: str | None = None
    """While `stage` is `waiting`: the job whose claimed range this series waits for."""

    @property
    def stage_label(self) -> str:
        return f"waiting for {self.waiting_for}" if self.stage == "waiting" and self.waiting_for else self.stage

    @property
    def finished(self) -> bool:
        return self.status in SYMBOL_FINISHED

    def name(self, several: bool) -> str:
        """How people see the series: the symbol, with its timeframe in a job of several."""
        return f"{self.symbol} {self.timeframe}" if several and self.timeframe else self.symbol

    @property
    def label(self) -> str:
        """The status as shown to people: a series cancelled before its first step `not started`."""
        untouched = self.stage == "validating" and not (self.requests or self.candles or self.segments_done)
        return "not started" if self.status == SYMBOL_CANCELLED and untouched else self.status

    def to_json(self) -> dict[str, Any]:
        out = {"symbol": self.symbol, "timeframe": self.timeframe, "status": self.status, "stage": self.stage,
               "segments_done": self.segments_done, "segments_total": self.segments_total,
               "candles": self.candles, "requests": self.requests, "error": self.error}
        if self.waiting_for is not None:
            out["waiting_for"] = self.waiting_for
        return out

    def public(self) -> dict[str, Any]:
        out = self.to_json()
        if self.error:
            out["error"] = clean(self.error)
        return out

    @classmethod
    def from_json(cls, e: dict[str, Any], timeframe: str | None = None) -> SymbolEntry:
        return cls(str(e["symbol"]), str(e.get("status") or SYMBOL_PENDING), str(e.get("stage") or "validating"),
                   int(e.get("segments_done") or 0), int(e.get("segments_total") or 0), int(e.get("candles") or 0),
                   int(e.get("requests") or 0), e.get("error"), e.get("timeframe") or timeframe, e.get("waiting_for"))


# -- the state -------------------------------------------------------------------------------
@dataclass(slots=True)
class JobState:
    """state.json, typed. Readers get it from `jobs.folders.load_status` (the reader's view:
    `interrupted` when no runner lives); the runner and the commands change it only through
    the methods below."""

    id: str
    provider: str
    timeframe: str
    start: str
    end: str
    created_at: str
    status: str = model.PENDING
    name: str | None = None
    schema: int = model.SCHEMA
    started_at: str | None = None
    updated_at: str | None = None
    completed_at: str | None = None
    symbols_total: int = 0
    symbols_completed: int = 0
    symbols_failed: int = 0
    percent: float = 0.0
    candles: int = 0
    requests: int = 0
    current_symbols: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    rate_symbols_per_s: float = 0.0
    rate_candles_per_s: float = 0.0
    eta_s: float | None = None
    errors_count: int = 0
    throttled: int = 0
    symbols: list[SymbolEntry] = field(default_factory=list)
    timeframes: list[str] = field(default_factory=list)
    # documented additions
    error: str | None = None
    retry_of: str | None = None
    # bookkeeping (never public)
    progress_at: str | None = None
    """When a series last moved (the runner's wall clock): what `health` reads a stall from."""
    synthetic: bool = False
    """The provider makes its data up (demo): every view says so."""
    seq: int | None = None
    runs: int = 0
    pid: int | None = None
    queued: bool = False
    control_offset: int = 0
    control_tail: str = ""
    control_acks: list[dict[str, Any]] = field(default_factory=list)
    # the reader's view (never written)
    queue_ahead: int | None = None
    alive: bool = True
    health: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know (an older folder's spec fields, a newer version's keys):
    kept and written back as they are."""

    # -- reading and writing --
    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobState:
        known = _STATE_FIELDS
        values = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k not in _VIEW_ONLY}
        timeframe = str(data.get("timeframe") or "")
        values["symbols"] = [SymbolEntry.from_json(e, timeframe) for e in data.get("symbols") or []]
        values["timeframes"] = list(data.get("timeframes") or ([timeframe] if timeframe else []))
        values["queued"] = bool(data.get("queued"))
        values["synthetic"] = bool(data.get("synthetic"))
        values["control_acks"] = [a for a in data.get("control_acks") or [] if isinstance(a, dict)]
        values["control_tail"] = str(data.get("control_tail") or "")
        values["control_offset"] = int(data.get("control_offset") or 0)
        values["runs"] = int(data.get("runs") or 0)
        values["current_symbols"] = list(data.get("current_symbols") or [])
        try:
            return cls(**values, extra=extra)
        except TypeError as e:  # a required key is missing
            raise StateFileError(f"job {data.get('id', '?')}: state file lacks a key ({e})") from None

    def head(self) -> dict[str, Any]:
        """Everything state.json holds but `symbols` (written last, one line each: jobs.statefile)."""
        out = dict(self.extra)
        for name in _STATE_FIELDS:
            if name != "symbols":
                out[name] = getattr(self, name)
        if not self.queued:
            del out["queued"]
        if self.retry_of is None:
            del out["retry_of"]
        if not self.synthetic:
            del out["synthetic"]
        return out

    def to_json(self) -> dict[str, Any]:
        return {**self.head(), "symbols": [e.to_json() for e in self.symbols]}

    def summary(self) -> dict[str, Any]:
        """A job as `list` shows it: the public status without the per-symbol entries (not built
        at all: the history index stores this for every finished job)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in CONTRACT_KEYS if k != "symbols"}
        out["name"] = clean(self.name) if self.name else self.name
        out["error"] = clean(self.error) if self.error else None
        out["exit_code"] = self.exit_code
        if self.retry_of:
            out["retry_of"] = self.retry_of
        if self.queue_ahead is not None:
            out["queue_ahead"] = self.queue_ahead
        if self.health is not None:
            out["health"] = self.health["word"]
            out["health_reasons"] = list(self.health["reasons"])
        return {k: clean_tree(v) for k, v in out.items()}

    def public(self) -> dict[str, Any]:
        """What users' scripts see: the contract's keys and the documented additions."""
        out = self.summary()
        out["symbols"] = [e.public() for e in self.symbols]
        return out

    # -- what a reader sees --
    @property
    def exit_code(self) -> int | None:
        return model.exit_code(self.status, self.symbols_failed)

    @property
    def several(self) -> bool:
        """A job of several timeframes: its series are (symbol, timeframe) pairs."""
        return len(self.timeframes) > 1

    @property
    def timeframes_text(self) -> str:
        return ",".join(self.timeframes) or self.timeframe

    @property
    def finished(self) -> bool:
        return self.status in model.FINISHED

    @property
    def over(self) -> bool:
        """Finished, or interrupted: nothing more happens until someone acts."""
        return self.status in model.FINISHED or self.status == model.INTERRUPTED

    @property
    def active(self) -> bool:
        return self.status in model.ACTIVE

    def view(self, alive: bool, queue_ahead: int | None = None) -> JobState:
        """The status a reader reports: `interrupted` when the state is active but no runner
        lives, unless the job waits in the queue (then `pending`, with `queue_ahead`)."""
        out = replace(self, alive=alive, queue_ahead=queue_ahead)
        if out.status == model.PENDING and queue_ahead is not None:
            out.alive = True
        if out.status in model.ACTIVE and not out.alive:
            out.status = model.INTERRUPTED
            out.current_symbols = []
            out.eta_s = None
        from ktrdr_collect.jobs.health import assess

        out.health = assess(out, time.time())
        return out

    # -- the state machine --
    def _move(self, target: str) -> None:
        if not model.can_transition(self.status, target):
            raise InvalidJobStateError(f"job {self.id}: cannot go from {self.status} to {target}")
        self.status = target

    def begin(self, pid: int, now: str) -> None:
        """A runner starts (or restarts) the job. Called holding the job's lock: a state left
        running, paused or interrupted by an earlier runner is that runner's, which is gone."""
        if self.status != model.PENDING and not self.finished:
            self.restart(now)
        self._move(model.RUNNING)
        self.runs += 1
        self.started_at = self.started_at or now
        self.pid = pid
        self.error = None

    def pause(self) -> None:
        self._move(model.PAUSED)

    def unpause(self) -> None:
        self._move(model.RUNNING)

    def finish(self, now: str) -> None:
        """The run reached its end: completed, or failed when no series succeeded."""
        self._move(model.final_status(self.symbols_completed, self.symbols_failed))
        self._ended(now, eta=0.0)

    def cancel(self, now: str) -> None:
        """Cancelled: by its runner, or (no runner alive) by the command itself; series that had
        not finished read `cancelled`."""
        self._move(model.CANCELLED)
        self.queued = False
        self._ended(now, eta=0.0)
        for entry in self.symbols:
            if entry.status in (SYMBOL_PENDING, SYMBOL_RUNNING):
                entry.status = SYMBOL_CANCELLED

    def fail(self, message: str, now: str) -> None:
        """The job itself failed (a bug inside a running job)."""
        self._move(model.FAILED)
        self.error = message
        self._ended(now, eta=0.0)

    def interrupt(self, reason: str) -> None:
        """Stopped before its end, resumable: a start-up error, a signal, an unwritable state."""
        if self.status != model.INTERRUPTED:
            self._move(model.INTERRUPTED)
        self.error = reason
        self.completed_at = None
        self.current_symbols = []
        self.eta_s = None

    def restart(self, now: str, queued: bool = False) -> None:
        """`resume` of an interrupted job (also one whose state still says it runs: its runner
        died): pending again, for a new runner now or, `queued`, when a slot frees."""
        if self.status in model.ACTIVE:
            self.status = model.INTERRUPTED  # what every reader already sees
        self._move(model.PENDING)
        self.error = None
        self.queued = queued
        self.updated_at = now

    def dequeue(self, now: str) -> None:
        """A queued job's turn came: it stays pending, for the runner about to start."""
        if not (self.status == model.PENDING and self.queued):
            raise InvalidJobStateError(f"job {self.id} is not queued")
        self.queued = False
        self.started_at = self.updated_at = now

    def _ended(self, now: str, eta: float) -> None:
        self.completed_at = self.updated_at = now
        self.current_symbols = []
        self.eta_s = eta


_VIEW_ONLY = frozenset({"queue_ahead", "alive", "health", "health_reasons", "exit_code", "extra"})
_STATE_FIELDS = tuple(f.name for f in fields(JobState) if f.name not in _VIEW_ONLY)


def new_state(job_id: str, spec: JobSpec, created_at: str, seq: int | None, queued: bool) -> JobState:
    """A job's first state: pending, every series not started."""
    units = [SymbolEntry(s, timeframe=tf) for tf in spec.all_timeframes for s in spec.symbols]
    return JobState(
        id=job_id, name=spec.name, provider=spec.provider, timeframe=spec.timeframe, start=spec.start,
        end=spec.end, created_at=created_at, updated_at=created_at, symbols_total=len(units),
        symbols=units, timeframes=list(spec.all_timeframes),
        retry_of=spec.retry_of, synthetic=spec.synthetic, seq=seq, queued=queued,
    )
