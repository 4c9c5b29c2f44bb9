"""Helpers for the end-to-end tests: run `collect` as a real subprocess against a private home."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from ktrdr_collect.jobs.lock import holder_pid, is_locked

COLLECT = [sys.executable, "-m", "ktrdr_collect"]
T = TypeVar("T")

HEADER = "timestamp,open,high,low,close,volume"
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
JOB_ID_RE = re.compile(r"^[a-z0-9-]{1,16}$")
FINISHED = ("completed", "failed", "cancelled")
UNFINISHED = ("pending", "running", "paused", "interrupted")

CONTRACT_KEYS = {
    "schema", "id", "name", "status", "provider", "timeframe", "start", "end", "created_at",
    "started_at", "updated_at", "completed_at", "symbols_total", "symbols_completed",
    "symbols_failed", "percent", "candles", "requests", "current_symbols", "elapsed_s",
    "rate_symbols_per_s", "rate_candles_per_s", "eta_s", "errors_count", "throttled", "symbols",
}
SYMBOL_KEYS = {"symbol", "status", "stage", "segments_done", "segments_total", "candles", "error"}

# A window of ~5,480 1h bars per symbol (2020-01-01 .. 2023-01-01).
LONG_WINDOW = ["-t", "1h", "--start", "2020-01-01", "--end", "2023-01-01"]
# ~1,820 1h bars per symbol.
YEAR_WINDOW = ["-t", "1h", "--start", "2022-01-01", "--end", "2023-01-01"]


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["KTRDR_COLLECT_HOME"] = str(home)
    env["NO_COLOR"] = "1"
    env.pop("KTRDR_COLLECT_DEBUG", None)
    return env


def collect(home: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `collect ARGS...` to completion (stdin closed) and return the result."""
    return subprocess.run(
        [*COLLECT, *args], env=env_for(home), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=timeout, check=False,
    )


def _as_a_terminal_would() -> None:
    """In the child: SIGINT as a terminal delivers it. A test run started in the background by a
    non-interactive shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COLLECT, *args], env=env_for(home), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_as_a_terminal_would,
    )


def poll_until(fn: Callable[[], T], timeout: float, interval: float = 0.01, what: str = "condition") -> T:
    """Call fn until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def job_folder(home: Path, job_id: str) -> Path:
    return home / "jobs" / job_id


def job_folders(home: Path) -> list[Path]:
    """Visible job folders (a new job is made as a hidden `.<id>.new` and renamed once written)."""
    jobs = home / "jobs"
    return sorted(p for p in jobs.iterdir() if p.is_dir() and not p.name.startswith(".")) if jobs.is_dir() else []


def read_state(home: Path, job_id: str) -> dict[str, Any]:
    return json.loads((job_folder(home, job_id) / "state.json").read_bytes())


def status_json(home: Path, ref: str) -> dict[str, Any]:
    r = collect(home, "status", ref, "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def start_detached(home: Path, *args: str) -> str:
    r = collect(home, "start", *args, "--detach", timeout=60)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    assert JOB_ID_RE.match(job_id), r.stdout
    return job_id


def wait_rc(home: Path, job_id: str, timeout: float = 60.0) -> int:
    return collect(home, "wait", job_id, "--timeout", str(timeout), timeout=timeout + 30).returncode


def requests_made(home: Path, job_id: str) -> int:
    return int(read_state(home, job_id)["requests"])


def wait_for_requests(home: Path, job_id: str, at_least: int = 1, timeout: float = 20.0) -> int:
    return poll_until(
        lambda: (n := requests_made(home, job_id)) >= at_least and n, timeout,
        what=f"job {job_id} to make {at_least} request(s)",
    )


def pid_alive(pid: int) -> bool:
    """True for a live process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def runner_pid(home: Path, job_id: str) -> int:
    text = (job_folder(home, job_id) / "lock").read_text()
    return int(text.splitlines()[0])


def runner_gone(home: Path, job_id: str, pid: int | None = None) -> bool:
    folder = job_folder(home, job_id)
    pid = pid if pid is not None else holder_pid(folder)
    return not is_locked(folder) and (pid is None or not pid_alive(pid))


def kill_runners(home: Path) -> list[str]:
    """SIGKILL every live runner in `home`; return the job ids that had one."""
    killed = []
    for folder in job_folders(home):
        if is_locked(folder):
            killed.append(folder.name)
            pid = holder_pid(folder)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    return killed


@contextlib.contextmanager
def extra_home(path: Path) -> Iterator[Path]:
    """A second home that the autouse leak guard does not know about: clean it up ourselves."""
    try:
        yield path
    finally:
        leaked = kill_runners(path)
    assert not leaked, f"runners left behind in {path}: {leaked}"


# -- data files ------------------------------------------------------------------------------


def data_dir(home: Path, tf: str = "1h") -> Path:
    return home / "data" / "demo" / tf


def csv_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.csv"))}


def to_ts(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def check_csv(path: Path) -> list[int]:
    """Validate the contract format of a data file; return its timestamps (epoch seconds)."""
    text = path.read_text()
    assert text.endswith("\n"), f"{path} does not end with a newline"
    lines = text.splitlines()
    assert lines[0] == HEADER, f"{path}: header {lines[0]!r}"
    stamps = []
    for line in lines[1:]:
        fields = line.split(",")
        assert len(fields) == 6, f"{path}: bad row {line!r}"
        assert TS_RE.match(fields[0]), f"{path}: bad timestamp {fields[0]!r}"
        o, h, low, c, v = (float(x) for x in fields[1:])
        assert low <= min(o, c) <= max(o, c) <= h and v >= 0, f"{path}: bad values {line!r}"
        stamps.append(to_ts(fields[0]))
    assert stamps == sorted(set(stamps)), f"{path}: timestamps not strictly ascending"
    return stamps


def demo_1h_bars(start: int, end: int) -> list[int]:
    """The demo calendar's 1h bars in [start, end): Mon-Fri, 14:30 .. 20:30 UTC."""
    out = []
    day0 = start // 86400 - 1
    for day in range(day0, end // 86400 + 2):
        if (day + 3) % 7 >= 5:  # 1970-01-01 was a Thursday
            continue
        for hour in range(14, 21):
            ts = day * 86400 + hour * 3600 + 1800
            if start <= ts < end:
                out.append(ts)
    return out


def job_diagnostics(home: Path) -> str:
    """Every job's log and runner stderr, for assertion messages."""
    out = []
    for folder in job_folders(home):
        for name in ("log", "runner.err"):
            path = folder / name
            if path.exists():
                out.append(f"--- {folder.name}/{name}\n{path.read_text()}")
    return "\n".join(out)


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]
