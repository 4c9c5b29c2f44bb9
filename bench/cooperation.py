"""cooperation: jobs on the same series share the work through claims (storage/claims.py).

Real detached jobs (`python -m ktrdr_collect start ... -d`, fresh KTRDR_COLLECT_HOME each scenario),
the demo provider with `latency_ms=20`, `max_bars=1000`, 4 workers, windows in the past (no
publication edge).

(a) identical: 10 symbols of `1h` 2012-01-01 -> 2024-01-01 (~21,900 bars, 22 requests each).
    One job alone; then two identical jobs started at once. Requests: the two jobs' sum / the
    lone job's (aim <= 1.05); files byte-identical to the lone job's; wall (first start -> last
    end, from the jobs' own `started_at`/`completed_at`) against the lone job's (info).
(b) backfill: one symbol of `1m` whose last year (2023) is stored; job A extends it back to
    2020 (3 years, ~294,000 bars, 294 requests); job B, started once A has made 20 requests,
    wants 2021 -> 2024 (the 2 years A is about to fetch). A alone is the baseline. Aims: A+B
    requests <= 1.05x A alone; A's wall with B running <= 1.3x A alone (no crawl); B's wall
    (info); the file byte-identical to A alone's.
(c) crossing: three jobs on one `1h` symbol with crossing windows (2012 -> 2019, 2016 -> 2022,
    2020 -> 2024: each overlaps the next and has a part of its own), `max_bars=50`,
    `latency_ms=5`, started at once; the baseline is the same three jobs one after the other.
    Aims: requests <= 1.05x the sequential ones; wall (first start -> last end) <= the
    sequential sum of walls; the file byte-identical.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from bench._common import Row, fmt_s, fresh_home, log, standalone
from bench.control_latency import start_jobs

OPTS = ["-o", "latency_ms=20", "-o", "max_bars=1000", "-w", "4"]
AIM_REQUESTS = 1.05
AIM_WALL = 1.3


def collect(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "ktrdr_collect", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"collect {' '.join(args[:2])} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def state(home: Path, job_id: str) -> dict:
    return json.loads((home / "jobs" / job_id / "state.json").read_bytes())


def wait_all(home: Path, ids: list[str], timeout: float = 600.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        states = [state(home, j) for j in ids]
        if all(s["completed_at"] for s in states):
            bad = [s["id"] for s in states if s["status"] != "completed"]
            if bad:
                raise RuntimeError(f"jobs {bad} did not complete")
            return states
        if time.monotonic() > deadline:
            raise RuntimeError("jobs still running after the timeout")
        time.sleep(0.05)


def wait_requests(home: Path, job_id: str, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while state(home, job_id)["requests"] < at_least:
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} made no {at_least} requests")
        time.sleep(0.01)


def span(states: list[dict]) -> float:
    return max(epoch(s["completed_at"]) for s in states) - min(epoch(s["started_at"]) for s in states)


def files(home: Path, tf: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((home / "data" / "demo" / tf).glob("*.csv"))}


def jobs(home: Path, *arg_lists: list[str]) -> list[dict]:
    return wait_all(home, start_jobs(list(arg_lists)))


def identical(quick: bool) -> list[Row]:
    n = 4 if quick else 10
    args = [*[f"CO{i}" for i in range(n)], "-t", "1h", "--start", "2012-01-01", "--end", "2024-01-01", *OPTS]
    with fresh_home() as home:
        (alone,) = jobs(home, args)
        want = files(home, "1h")
    with fresh_home() as home:
        pair = jobs(home, args, args)
        got = files(home, "1h")
    requests = sum(s["requests"] for s in pair)
    ratio = requests / alone["requests"]
    walls = span([alone]), span(pair)
    log(f"cooperation identical: alone {alone['requests']} req {walls[0]:.2f}s; "
        f"pair {[s['requests'] for s in pair]} req {walls[1]:.2f}s; files identical {got == want}")
    return [
        Row(f"cooperation 2 identical jobs ({n} sym 1h 12y) requests", f"{requests} req",
            f"{alone['requests']} req alone", ratio, f"<= {AIM_REQUESTS}x", ratio <= AIM_REQUESTS),
        Row("cooperation 2 identical jobs files", "identical" if got == want else "DIFFERENT", "lone job's",
            None, "identical", got == want),
        Row("cooperation 2 identical jobs wall", fmt_s(walls[1]), fmt_s(walls[0]) + " alone",
            walls[1] / walls[0], "-", None),
    ]


def backfill(quick: bool) -> list[Row]:
    first = "2022-01-01" if quick else "2020-01-01"
    seed = ["BF", "-t", "1m", "--start", "2023-01-01", "--end", "2024-01-01", *OPTS, "-q"]
    a_args = ["BF", "-t", "1m", "--start", first, "--end", "2024-01-01", *OPTS]
    b_args = ["BF", "-t", "1m", "--start", "2021-01-01" if not quick else "2022-06-01", "--end", "2024-01-01", *OPTS]
    with fresh_home() as home:
        collect("start", *seed)
        (alone,) = jobs(home, a_args)
        want = files(home, "1m")
    with fresh_home() as home:
        collect("start", *seed)
        (a_id,) = start_jobs([a_args])
        wait_requests(home, a_id, 20)
        (b_id,) = start_jobs([b_args])
        a, b = wait_all(home, [a_id, b_id])
        got = files(home, "1m")
    requests = a["requests"] + b["requests"]
    ratio = requests / alone["requests"]
    wall_alone, wall_a, wall_b = span([alone]), span([a]), span([b])
    log(f"cooperation backfill: alone {alone['requests']} req {wall_alone:.2f}s; A {a['requests']} req "
        f"{wall_a:.2f}s, B {b['requests']} req {wall_b:.2f}s; files identical {got == want}")
    label = f"cooperation backfill 1m {first[:4]}->2023 + 2nd job"
    return [
        Row(f"{label} requests", f"{requests} req", f"{alone['requests']} req alone", ratio,
            f"<= {AIM_REQUESTS}x", ratio <= AIM_REQUESTS),
        Row(f"{label} wall of A", fmt_s(wall_a), fmt_s(wall_alone) + " alone", wall_a / wall_alone,
            f"<= {AIM_WALL}x", wall_a <= AIM_WALL * wall_alone,
            note=f"B's wall {wall_b:.2f}s ({b['requests']} requests)"),
        Row(f"{label} file", "identical" if got == want else "DIFFERENT", "A alone's", None, "identical",
            got == want),
    ]


def crossing(quick: bool) -> list[Row]:
    windows = [("2012-01-01", "2019-01-01"), ("2016-01-01", "2022-01-01"), ("2020-01-01", "2024-01-01")]
    if quick:
        windows = [("2019-01-01", "2022-01-01"), ("2020-06-01", "2023-01-01"), ("2022-01-01", "2024-01-01")]
    opts = ["-t", "1h", "-o", "latency_ms=5", "-o", "max_bars=50", "-w", "1"]
    arg_lists = [["CX", "--start", a, "--end", b, *opts] for a, b in windows]
    with fresh_home() as home:
        alone = [jobs(home, args)[0] for args in arg_lists]
        want = files(home, "1h")
    with fresh_home() as home:
        together = jobs(home, *arg_lists)
        got = files(home, "1h")
    seq_req, req = sum(s["requests"] for s in alone), sum(s["requests"] for s in together)
    seq_wall, wall = sum(span([s]) for s in alone), span(together)
    log(f"cooperation crossing: one after the other {[s['requests'] for s in alone]} req {seq_wall:.2f}s; "
        f"together {[s['requests'] for s in together]} req {wall:.2f}s; files identical {got == want}")
    label = "cooperation 3 jobs, crossing 1h windows"
    return [
        Row(f"{label}, requests", f"{req} req", f"{seq_req} req in turn", req / seq_req, f"<= {AIM_REQUESTS}x",
            req <= AIM_REQUESTS * seq_req),
        Row(f"{label}, wall", fmt_s(wall), fmt_s(seq_wall) + " in turn", wall / seq_wall, "<= 1x", wall <= seq_wall),
        Row(f"{label}, file", "identical" if got == want else "DIFFERENT", "in turn", None, "identical", got == want),
    ]


def run(quick: bool = False) -> list[Row]:
    return identical(quick) + backfill(quick) + crossing(quick)


if __name__ == "__main__":
    standalone(run)
