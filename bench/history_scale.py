"""history_scale: `collect list` and `collect stats` with 10,000 finished jobs in home.

The jobs are written directly as job folders (0700) holding a valid state.json (0600, from
`ktrdr_collect.jobs.record.new_state`, then finished: status, timestamps, per-symbol results)
and a short log: ids from `new_job_id(created)` so they sort by creation time, created over the
last 25 days, 1-20 symbols each, providers demo/yahoo/binance/csv, ~80 % completed, the rest
completed with failed symbols, failed or cancelled, with a handful of distinct error texts.
(--quick: 2,000 jobs.)

Timed as whole processes (`python -m ktrdr_collect ...`, spawn to exit, output captured):
`list --limit 20` and `stats --since 30d`. The first `list` builds the history index from the
folders and is reported on its own; then >= 5 warm rounds (3 with --quick) of list, stats and
the baseline `python -c pass` in rotating order; medians. A last row deletes the index and times
a cold `stats`. Outputs are checked: list = the 20 newest ids, newest first; stats counts every
job. Aim: warm median <= 0.5 s each.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from bench._common import Row, fmt_s, fresh_home, log, median, standalone, timed

AIM_S = 0.5
PROVIDERS = [("demo", 0.45), ("yahoo", 0.3), ("binance", 0.15), ("csv", 0.1)]
ERRORS = [
    "unknown symbol on yahoo: No data found, symbol may be delisted",
    "HTTP 503 from query2.finance.yahoo.com (gave up after 5 attempts)",
    "rate limited 201 times: binance 429 Too Many Requests",
    "cannot store data: No space left on device",
    "yahoo refused the request: Invalid input - interval=1h (Unprocessable Entity, HTTP 422)",
    "timed out after 30.0s (gave up after 5 attempts)",
]
TIMEFRAMES = ["1d", "1d", "1d", "1h", "1h", "5m", "1m", "1w"]


def make_jobs(n: int, seed: int = 7) -> tuple[list[str], int]:
    """Write n finished job folders; return (ids, how many finished within 30 days)."""
    from ktrdr_collect import paths
    from ktrdr_collect.jobs.folders import iso, new_job_id
    from ktrdr_collect.jobs.launch import LOG_FILE, JobRequest, job_spec
    from ktrdr_collect.jobs.record import new_state
    from ktrdr_collect.jobs.statefile import write_state

    rnd = random.Random(seed)
    paths.ensure_private_dir(paths.home())
    jobs_dir = paths.ensure_private_dir(paths.jobs_dir())
    now = time.time()
    ids, recent = [], 0
    names = [p for p, _ in PROVIDERS]
    weights = [w for _, w in PROVIDERS]
    for i in range(n):
        created = now - 25 * 86400 + i * (25 * 86400 - 600) / n + rnd.uniform(0, 1)
        job_id = new_job_id(created)
        provider = rnd.choices(names, weights)[0]
        tf = rnd.choice(TIMEFRAMES)
        syms = [f"S{rnd.randrange(3000):04d}" for _ in range(rnd.choice([1, 1, 2, 3, 5, 8, 12, 20]))]
        syms = list(dict.fromkeys(syms))
        end = datetime.fromtimestamp(created, UTC).replace(microsecond=0)
        req = JobRequest(symbols=syms, timeframe=tf, start=end - timedelta(days=rnd.choice([30, 365, 730])), end=end,
                         provider=provider, public_options={"latency_ms": 50.0} if provider == "demo" else {},
                         workers=4, data_dir=paths.home() / "data", name=f"nightly-{i % 17}" if i % 3 == 0 else None,
                         synthetic=provider == "demo")
        spec = job_spec(req)
        state = new_state(job_id, spec, iso(created), None, False).to_json()
        roll = rnd.random()
        status = "completed" if roll < 0.85 else "failed" if roll < 0.93 else "cancelled"
        elapsed = round(rnd.uniform(0.5, 120.0) * len(syms), 3)
        failed = 0
        candles = requests = 0
        for entry in state["symbols"]:
            bars = rnd.randrange(200, 9000)
            bad = status == "failed" or (status == "completed" and rnd.random() < 0.05)
            if bad:
                entry.update(status="failed", stage="fetching", error=rnd.choice(ERRORS), segments_total=2,
                             segments_done=0, requests=5)
                failed += 1
            elif status == "cancelled" and rnd.random() < 0.5:
                entry.update(status="cancelled", stage="fetching", segments_total=3, segments_done=1,
                             candles=bars // 3, requests=1)
            else:
                entry.update(status="completed", stage="done", segments_total=2, segments_done=2, candles=bars,
                             requests=2)
            candles += entry["candles"]
            requests += entry["requests"]
        completed_n = sum(1 for e in state["symbols"] if e["status"] == "completed")
        if status == "completed" and completed_n == 0:
            status = "failed"
        done_at = created + 0.2 + elapsed
        state.update(
            status=status, created_at=iso(created), started_at=iso(created + 0.2), updated_at=iso(done_at),
            completed_at=iso(done_at), symbols_completed=completed_n, symbols_failed=failed,
            percent=100.0 if status != "cancelled" else round(100 * completed_n / len(syms), 2), candles=candles,
            requests=requests, elapsed_s=elapsed, rate_symbols_per_s=round(completed_n / elapsed, 4),
            rate_candles_per_s=round(candles / elapsed, 2), eta_s=0.0, errors_count=failed * 5,
            throttled=rnd.choice([0, 0, 0, 3]), runs=1, pid=100000 + i,
            error="no symbol succeeded" if status == "failed" else None,
        )
        folder = jobs_dir / job_id
        folder.mkdir(mode=0o700)
        spec.write(folder)
        write_state(folder, state)
        fd = paths.open_private(folder / LOG_FILE, os.O_WRONLY | os.O_CREAT)
        os.write(fd, (f"{iso(created)} job {job_id}: pending -> running\n"
                      f"{iso(done_at)} job {job_id}: running -> {status}\n").encode())
        os.close(fd)
        ids.append(job_id)
        recent += done_at >= now - 30 * 86400
    return ids, recent




def timed_rss(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a whole command, output discarded."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} exited {proc.returncode}")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024


def run(quick: bool = False) -> list[Row]:
    n = 2000 if quick else 10_000
    rounds = 3 if quick else 5
    cli = [sys.executable, "-m", "ktrdr_collect"]
    cmds = {
        "list": [*cli, "list", "--limit", "20", "--json"],
        "stats": [*cli, "stats", "--since", "30d", "--json"],
        "pass": [sys.executable, "-c", "pass"],
    }
    problems = []
    with fresh_home() as home:
        t0 = time.perf_counter()
        ids, recent = make_jobs(n)
        gen = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in (home / "jobs").glob("*/state.json"))
        log(f"history_scale: wrote {n} job folders in {gen:.1f}s ({size / n / 1024:.1f} KiB state.json each)")
        newest = sorted(ids, reverse=True)[:20]
        cold_list, out = timed(cmds["list"])
        if [j["id"] for j in json.loads(out)] != newest:
            problems.append("list: not the 20 newest ids in order")
        timed(cmds["pass"])
        samples: dict[str, list[float]] = {k: [] for k in cmds}
        order = list(cmds)
        for i in range(rounds):
            for k in order[i % 3:] + order[:i % 3]:
                dt, out = timed(cmds[k])
                samples[k].append(dt)
                if k == "list" and [j["id"] for j in json.loads(out)] != newest:
                    problems.append("list (warm): not the 20 newest ids in order")
                if k == "stats" and json.loads(out)["jobs"] != recent:
                    problems.append(f"stats: {json.loads(out)['jobs']} jobs, expected {recent}")
        full = {"table": [*cli, "list"], "json": [*cli, "list", "--json"]}
        whole = {k: [timed_rss(c) for _ in range(3)] for k, c in full.items()}
        (home / "jobs" / "index.sqlite").unlink()
        cold_stats, out = timed(cmds["stats"])
        if json.loads(out)["jobs"] != recent:
            problems.append("stats (cold): wrong job count")
        index_kib = (home / "jobs" / "index.sqlite").stat().st_size / 1024
    lst, sts, bare = (median(samples[k]) for k in ("list", "stats", "pass"))
    log(f"history_scale: list cold {fmt_s(cold_list)} warm {fmt_s(lst)}; stats warm {fmt_s(sts)} cold "
        f"{fmt_s(cold_stats)}; python -c pass {fmt_s(bare)}")
    check = "outputs correct" if not problems else "; ".join(dict.fromkeys(problems))
    base = f"python -c pass {fmt_s(bare)}"
    spread = lambda xs: f"{fmt_s(min(xs))}..{fmt_s(max(xs))}"  # noqa: E731
    table_s, json_s = (median([t for t, _ in whole[k]]) for k in ("table", "json"))
    table_mb, json_mb = (max(m for _, m in whole[k]) for k in ("table", "json"))
    return [
        Row(f"history_scale list (table, all {n} jobs) vs --json", f"{fmt_s(table_s)}, {table_mb:.0f} MB RSS",
            f"--json {fmt_s(json_s)}, {json_mb:.0f} MB", table_s / json_s, "<= 2x", table_s <= 2 * json_s,
            note="the table streams from the index: constant memory, no renderer holding every row"),
        Row(f"history_scale list --limit 20, {n} jobs, warm (median {rounds})", fmt_s(lst), base, lst / bare,
            "median <= 0.5 s", lst <= AIM_S and not problems,
            note=f"{check}; warm range {spread(samples['list'])}; "
                 f"{gen:.1f}s to write {n} folders, {size / n / 1024:.1f} KiB state.json each, index "
                 f"{index_kib / 1024:.1f} MB"),
        Row(f"history_scale stats --since 30d, {n} jobs, warm (median {rounds})", fmt_s(sts), base, sts / bare,
            "median <= 0.5 s", sts <= AIM_S and not problems,
            note=f"warm range {spread(samples['stats'])}; counts {recent} jobs"),
        Row("history_scale list, first run (index build)", fmt_s(cold_list), base, cold_list / bare,
            "(info) once per new home", None),
        Row("history_scale stats, first run (index deleted)", fmt_s(cold_stats), base, cold_stats / bare,
            "(info) after index loss", None),
    ]


if __name__ == "__main__":
    standalone(run)
