"""many_jobs: 100 detached demo jobs running at once (--quick: 25).

Each job is `python -m ktrdr_collect start M<i> -t 1d --start 2023-01-02 --end 2024-01-01
-o max_bars=66 -o latency_ms=L -d` (fresh KTRDR_COLLECT_HOME): 260 bars in 4 requests. The
`start` commands run 4 at a time. L is chosen per job at its launch so that every job is still
running when the last one has started: all are due to finish at a common target time (the
projected end of the launches + a few seconds), so L = (target - launch time) / 4, at least 0.5 s.

Measured, while all N runners are up (each job's state.json says running):
- memory per running job: Σ VmRSS (/proc/<pid>/status) of the runner processes (pid from
  `<home>/jobs/<id>/lock`, checked to be a `ktrdr_collect.jobs.runner`) ÷ N, against the VmRSS of
  a bare `python -c "import time; time.sleep(5)"` measured in the same run;
- `collect status --json` (no JOB): every id it shows is one of ours and pending/running (none
  `interrupted`), and all N are there; `collect status` (text) exits 0; `collect list --json`:
  exactly our N ids, newest first (created_at never increases down the list). Timed, with
  `python -c pass` as the baseline.
Then every job must end `completed` (exit code 0) with 260 candles and 4 requests, and its CSV
must hold 260 rows. Also: wall time to launch all N (`start -d`, 4 at a time) against
`python -c pass` x N, 4 at a time, measured in the same run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

from bench._common import Row, fmt_s, fresh_home, log, median, standalone, timed
from bench.control_latency import stop_all

PARALLEL = 4
REQUESTS = 4
BARS = 260  # 1d bars 2023-01-02 .. 2024-01-01 (Mon-Fri)
MIN_LATENCY_S = 0.5


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid`, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def launch_all(n: int, argv_for: Callable[[int], list[str]]) -> tuple[float, list[str]]:
    """Run n commands, PARALLEL at a time (argv_for(i) is built at launch); return (wall, stdouts)."""
    outs: list[str] = [""] * n
    running: dict[int, subprocess.Popen[str]] = {}
    nxt = 0
    t0 = time.perf_counter()
    while nxt < n or running:
        while nxt < n and len(running) < PARALLEL:
            running[nxt] = subprocess.Popen(argv_for(nxt), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True, env=os.environ.copy())
            nxt += 1
        for i, p in list(running.items()):
            if p.poll() is not None:
                out, err = p.communicate()
                if p.returncode != 0:
                    raise RuntimeError(f"command {i} exited {p.returncode}: {err.strip()[-300:]}")
                outs[i] = out.strip()
                del running[i]
        time.sleep(0.002)
    return time.perf_counter() - t0, outs


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ktrdr_collect", *args]




def run(quick: bool = False) -> list[Row]:
    from ktrdr_collect import paths
    from ktrdr_collect.jobs.folders import load_status
    from ktrdr_collect.jobs.lock import holder_pid

    n = 25 if quick else 100
    hold = 3.0 if quick else 4.0
    problems: list[str] = []
    # baseline memory: a bare interpreter, alive while we launch
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    with fresh_home() as home:
        try:
            base_wall, _ = launch_all(n, lambda i: [sys.executable, "-c", "pass"])
            bare_rss = rss_kb(sleeper.pid)
            t0 = time.time()
            target = [t0 + (0.35 if quick else 0.45) * n + hold]  # first guess; moved later if launches are slower
            stamps: list[float] = []

            def argv(i: int) -> list[str]:
                now = time.time()
                stamps.append(now)
                if i >= 8:  # project the end of the launches from the recent pace, with a margin
                    pace = (now - stamps[-8]) / 7
                    target[0] = max(target[0], now + pace * (n - i) * 1.15 + hold)
                latency = max(MIN_LATENCY_S, (target[0] - now) / REQUESTS)
                return cli("start", f"M{i:03d}", "-t", "1d", "--start", "2023-01-02", "--end", "2024-01-01",
                           "-o", f"max_bars={-(-BARS // REQUESTS)}", "-o", f"latency_ms={latency * 1000:.0f}",
                           "-d")

            start_wall, ids = launch_all(n, argv)
            log(f"many_jobs: launched {n} jobs in {start_wall:.1f}s (python -c pass x{n}: {base_wall:.1f}s); "
                f"target end in {target[0] - time.time():.1f}s")
            started = set(ids)
            if len(started) != n:
                problems.append(f"{n} starts gave {len(started)} distinct ids")
            # wait until every runner says running
            deadline = time.monotonic() + 20
            while True:
                statuses = {j: load_status(j).status for j in ids}
                if all(s == "running" for s in statuses.values()) or time.monotonic() > deadline:
                    break
                if any(s not in ("pending", "running") for s in statuses.values()):
                    break  # some already ended: they did not all overlap
                time.sleep(0.05)
            all_running = all(s == "running" for s in statuses.values())
            if not all_running:
                problems.append("not all running together: " + ", ".join(
                    f"{s} {sum(1 for x in statuses.values() if x == s)}" for s in sorted(set(statuses.values()))))
            # memory of the runners
            rss, cpu0, missing = [], {}, []
            t_cpu0 = time.monotonic()
            for j in ids:
                pid = holder_pid(paths.job_dir(j))
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if b"ktrdr_collect.jobs.runner" not in f.read():
                            raise FileNotFoundError
                    rss.append(rss_kb(pid))
                    cpu0[pid] = cpu_ticks(pid)
                except (OSError, TypeError):
                    missing.append(j)
            if missing:
                problems.append(f"{len(missing)} jobs without a live runner at the RSS sample, e.g. {missing[:2]}")
            alive_after = sum(load_status(j).status == "running" for j in ids)
            # the read commands while they run
            st_t, out = timed(cli("status", "--json"))
            shown = json.loads(out)
            bad = [s["id"] for s in shown if s["id"] not in started or s["status"] not in ("pending", "running")]
            if bad:
                problems.append(f"status: {len(bad)} foreign or wrong-state entries, e.g. {bad[:3]}")
            if all_running and {s["id"] for s in shown} != started:
                problems.append(f"status shows {len(shown)} of {n} running jobs")
            txt_t, _ = timed(cli("status"))
            ls_t, out = timed(cli("list", "--json"))
            listed = json.loads(out)
            if {s["id"] for s in listed} != started or len(listed) != n:
                problems.append(f"list: {len(listed)} entries, {len({s['id'] for s in listed} & started)} of ours")
            created = [s["created_at"] for s in listed]
            if created != sorted(created, reverse=True):
                problems.append("list: not newest first")
            # ids are "sortable by creation time" (CONTRACT): pairs that list's created_at order puts
            # the other way round from the id order
            listed_ids = [s["id"] for s in listed]
            inversions = sum(1 for x, y in zip(listed_ids, listed_ids[1:], strict=False) if x < y)
            idle_cpu = []
            for pid, ticks in cpu0.items():
                with contextlib.suppress(OSError):
                    idle_cpu.append(cpu_ticks(pid) - ticks)
            cpu_s = time.monotonic() - t_cpu0
            idle_pct = 100 * sum(idle_cpu) / os.sysconf("SC_CLK_TCK") / cpu_s / max(1, len(idle_cpu))
            pass_t = median([timed([sys.executable, "-c", "pass"])[0] for _ in range(3)])
            # let them finish
            deadline = time.monotonic() + max(30.0, target[0] - time.time() + 30)
            while time.monotonic() < deadline:
                finals = [load_status(j).public() for j in ids]
                if all(s["status"] not in ("pending", "running", "paused") for s in finals):
                    break
                time.sleep(0.2)
            t_done = time.time()
        finally:
            stop_all()
            sleeper.wait()
        wrong = [(s["id"], s["status"], s["candles"], s["requests"]) for s in finals
                 if (s["status"], s["exit_code"], s["candles"], s["requests"], s["symbols_completed"])
                 != ("completed", 0, BARS, REQUESTS, 1)]
        rows_bad = 0
        for i in range(n):
            f = home / "data" / "demo" / "1d" / f"M{i:03d}.csv"
            rows_bad += (sum(1 for _ in f.open()) - 1 if f.exists() else 0) != BARS
    if wrong:
        problems.append(f"{len(wrong)} jobs did not complete correctly, e.g. {wrong[:3]}")
    if rows_bad:
        problems.append(f"{rows_bad} CSV files without {BARS} rows")
    per_job = sum(rss) / len(rss) / 1024 if rss else float("nan")
    bare = bare_rss / 1024
    log(f"many_jobs: {len(rss)} runners, {per_job:.1f} MB each (bare python {bare:.1f} MB); status {fmt_s(st_t)}, "
        f"list {fmt_s(ls_t)}; all ended {t_done - t0:.1f}s after the first launch; problems: {problems or 'none'}")
    check = "all correct" if not problems else "; ".join(problems)
    return [
        Row(f"many_jobs {n} jobs: correctness", f"{n - len(wrong)}/{n} completed", f"{n} started",
            (n - len(wrong)) / n, "all completed; status/list correct", not problems,
            note=f"{check}; {alive_after}/{n} still running after the RSS sample; "
                 f"adjacent list entries whose ids sort the other way: {inversions}"),
        Row(f"many_jobs RSS per running job (n={len(rss)})", f"{per_job:.1f} MB",
            f"bare python {bare:.1f} MB", per_job / bare, "(info)", None,
            note=f"Σ {sum(rss) / 1024:.0f} MB over {len(rss)} runner processes (VmRSS, includes shared pages); "
                 f"CPU of a waiting runner {idle_pct:.1f} % of a core (over {cpu_s:.1f} s, {len(idle_cpu)} runners)"),
        Row(f"many_jobs launch {n} x start -d ({PARALLEL} at a time)", fmt_s(start_wall),
            f"python -c pass x{n} {fmt_s(base_wall)}", start_wall / base_wall, "(info)", None,
            note=f"{start_wall / n * PARALLEL * 1000:.0f} ms per start -d with {PARALLEL} in flight"),
        Row(f"many_jobs status --json with {n} running", fmt_s(st_t), f"python -c pass {fmt_s(pass_t)}",
            st_t / pass_t, "(info)", None, note=f"text `status` {fmt_s(txt_t)}"),
        Row(f"many_jobs list --json with {n} running", fmt_s(ls_t), f"python -c pass {fmt_s(pass_t)}",
            ls_t / pass_t, "(info)", None),
    ]


if __name__ == "__main__":
    standalone(run)
