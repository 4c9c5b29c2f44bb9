"""scale_jobs: a 5,000-symbol demo job costs per symbol what a 100-symbol one does, and through the
CLI about what the Python API costs for the same batch.

Demo provider, `-t 1d --days 30 -o latency_ms=1 -w 4` (one request a symbol; the job changes every
few milliseconds, so the runner writes state.json as often as it lets itself), home and data on
tmpfs when there is one. Each run is measured as whole processes:

- the CLI: `python -m ktrdr_collect start -f FILE ... -d -q`, run from a helper process that is a
  child subreaper (PR_SET_CHILD_SUBREAPER): `start` exits at once, its runner is adopted by the
  helper, and `os.wait4` gives each process's own CPU (user + system); CLI CPU = start + runner.
- `start` in the foreground (`-q`), the same way, once: it watches the job to its end (information).
- the API: `python -c "ktrdr_collect.api.collect(...)"`, same symbols, options and workers,
  `progress=False`, a fresh data folder; CPU from `os.wait4`.

Per symbol: the runner's CPU less that of a 1-symbol job (the fixed start-up cost), divided by the
symbols less one, for 100 and 5,000 symbols (--quick: 1,000); best of 4 runs (1 with --quick).
CLI against API: 4 pairs (1 with --quick), each `start -d` then the API back to back; the ratio is
the median of the pairs' ratios (other tenants' load moves a single run's CPU by up to 40 % on a
shared machine; a pair shares the moment). Aims: per-symbol CPU at 5,000 <= 1.2x that at 100; CLI
CPU <= 1.15x the API's at 5,000.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._common import Row, fresh_home, log, median, standalone

OPTIONS = {"latency_ms": 1.0}
WORKERS = 4
DAYS = 30
PER_SYMBOL_AIM = 1.2
CLI_AIM = 1.15

HELPER = r"""
import ctypes, json, os, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: adopt the runner
start = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
out, err = start.communicate()
if start.returncode != 0:
    sys.exit(f"start exited {start.returncode}: {err.decode()[-300:]}")
try:
    pid, status, runner = os.wait4(-1, 0)  # the runner: the only child left, adopted when start exited
except ChildProcessError:  # start reaped it itself: its CPU is in start's (the caller's total has it)
    runner = None
print(json.dumps({"runner_cpu": runner and runner.ru_utime + runner.ru_stime,
                  "runner_exit": os.waitstatus_to_exitcode(status) if runner else 0}))
"""
"""`communicate` reaps `start`; its CPU is then in RUSAGE_CHILDREN, read by the caller's wait4 of
the helper (helper + start + runner); the runner's own comes from the helper's wait4."""


def symbols_file(folder: Path, n: int) -> Path:
    path = folder / f"symbols-{n}.txt"
    path.write_text("".join(f"S{i:05d}\n" for i in range(n)))
    return path


def cpu_of(cmd: list[str]) -> tuple[float, str]:
    """(CPU s of the command and the children it waited for, stdout) of a whole process."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, env=os.environ.copy())
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: {err.decode()[-400:]}")
    return usage.ru_utime + usage.ru_stime, text


def via_cli(home: Path, n: int, data: Path, detach: bool = True) -> tuple[float | None, float]:
    """(runner CPU, CLI CPU = helper + start + runner) for one job of n symbols; `detach`: `start -d`,
    else `start` in the foreground, watching the job to its end."""
    cmd = [sys.executable, "-m", "ktrdr_collect", "start", "-f", str(symbols_file(home, n)), "-t", "1d",
           "--days", str(DAYS), "-w", str(WORKERS), "--data-dir", str(data), *(["-d"] if detach else []), "-q",
           *[a for k, v in OPTIONS.items() for a in ("-o", f"{k}={v}")]]
    total, out = cpu_of([sys.executable, "-c", HELPER, *cmd])
    got = json.loads(out)
    job = max(os.listdir(home / "jobs"))  # the newest job: this one
    state = json.loads((home / "jobs" / job / "state.json").read_text())
    if got["runner_exit"] != 0 or state["status"] != "completed" or state["symbols_completed"] != n:
        raise RuntimeError(f"job {job}: {state['status']}, {state['symbols_completed']}/{n} completed")
    return got["runner_cpu"], total


def via_api(home: Path, n: int, data: Path) -> float:
    code = (f"from ktrdr_collect.api import collect\n"
            f"symbols = open({str(symbols_file(home, n))!r}).read().split()\n"
            f"r = collect(symbols, '1d', days={DAYS}, provider='demo', options={OPTIONS!r}, "
            f"data_dir={str(data)!r}, workers={WORKERS}, progress=False)\n"
            f"assert len(r) == {n} and all(x.status == 'completed' for x in r), 'not all completed'\n")
    cpu, _ = cpu_of([sys.executable, "-c", code])
    return cpu


def run(quick: bool = False) -> list[Row]:
    big = 1000 if quick else 5000
    trials = 1 if quick else 4
    runner: dict[int, float] = {}
    pairs: list[tuple[float, float]] = []  # (CLI, API) of one trial, run one after the other
    foreground = api_first = 0.0
    with fresh_home(prefix="ktrdr-bench-scale-", memory=True) as home:
        fresh = iter(range(10_000))
        for trial in range(trials):
            cli_big = 0.0
            for n in (1, 100, big):
                r, c = via_cli(home, n, home / f"data{next(fresh)}")
                assert r is not None, "the runner of `start -d` was not adopted"
                runner[n] = min(runner.get(n, float("inf")), r)
                cli_big = c
                log(f"scale_jobs: {n} symbols via the CLI: runner {r:.2f} s CPU, CLI total {c:.2f} s")
            a = via_api(home, big, home / f"data{next(fresh)}")
            log(f"scale_jobs: {big} symbols via the API: {a:.2f} s CPU")
            pairs.append((cli_big, a))
            if trial == 0:
                _, foreground = via_cli(home, big, home / f"data{next(fresh)}", detach=False)
                api_first = a
                log(f"scale_jobs: {big} symbols via `start` in the foreground: {foreground:.2f} s CPU")
    per = {n: (runner[n] - runner[1]) / (n - 1) for n in (100, big)}
    ratio = per[big] / per[100]
    ratios = sorted(c / a for c, a in pairs)
    cli_ratio = median(ratios)
    cli_med, api_med = median([c for c, _ in pairs]), median([a for _, a in pairs])
    fixed = f"1-symbol job's runner {runner[1]:.2f} s subtracted"
    return [
        Row(f"scale_jobs runner CPU per symbol, {big} vs 100 symbols", f"{per[big] * 1000:.2f} ms",
            f"100 symbols: {per[100] * 1000:.2f} ms", ratio, f"<= {PER_SYMBOL_AIM}x", ratio <= PER_SYMBOL_AIM,
            note=f"best of {trials}; {fixed}; runner totals: 1: {runner[1]:.2f} s, 100: {runner[100]:.2f} s, "
                 f"{big}: {runner[big]:.2f} s"),
        Row(f"scale_jobs CLI CPU vs Python API, {big} symbols (median of {trials} pairs)", f"{cli_med:.2f} s",
            f"API {api_med:.2f} s", cli_ratio, f"<= {CLI_AIM}x", cli_ratio <= CLI_AIM,
            note="CLI = `start -d` + its runner; ratio: the median of each pair's (run back to back); pairs "
                 + ", ".join(f"{c:.2f}/{a:.2f}" for c, a in pairs)
                 + f" s; ratios {', '.join(f'{r:.3f}' for r in ratios)}"),
        Row(f"scale_jobs `start` in the foreground vs Python API, {big} symbols", f"{foreground:.2f} s",
            f"API {api_first:.2f} s", foreground / api_first, "(info)", None,
            note="one run: start + its runner; the foreground `start` re-reads the whole state.json each time "
                 "it changes (cli/follow.py) to print finished series"),
    ]


if __name__ == "__main__":
    standalone(run)
