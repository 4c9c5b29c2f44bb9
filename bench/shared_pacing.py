"""shared_pacing: three concurrent jobs sharing one provider rate limit (demo rate_limit=20).

Three detached jobs (`python -m ktrdr_collect start ... -d`, fresh KTRDR_COLLECT_HOME), each with
4 symbols of its own, `1d` 2000-01-03 -> 2024-01-01 and `-o rate_limit=20 -o latency_ms=0
-o max_bars=5` (~1,250 requests per symbol, far more than the run needs), 4 workers. All three
pace through the machine-wide pacer file and the demo "server" refuses anything beyond 20
requests in any 1 s (counted in `throttled`). Once all three are running and have made a
request, the window opens; after 55 s (--quick: 12 s) it closes and the jobs are cancelled.
state.json of each job is polled every 0.25 s; a job's request rate over the window is
Δrequests / Δupdated_at between its first and last version seen inside the window (updated_at is
stamped by the runner at the snapshot, so state.json's write delay cancels out); the achieved
total rate is the sum of the three. (The simpler Σ Δrequests / poller wall time is in the note.)
Aims: total rate / 20 >= 0.95
(the pacer itself keeps a small margin, `MARGIN` in providers/pacing.py: at most 1/(1+MARGIN)), throttled == 0
(summed over the whole run, from the final states).
"""

from __future__ import annotations

import json
import time
from datetime import datetime

from bench._common import Row, fresh_home, log, standalone
from bench.control_latency import start_jobs, stop_all, wait_running

LIMIT = 20
AIM = 0.95


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run(quick: bool = False) -> list[Row]:
    from ktrdr_collect import paths
    from ktrdr_collect.jobs.folders import load_status

    duration = 12.0 if quick else 55.0
    opts = ["-o", f"rate_limit={LIMIT}", "-o", "latency_ms=0", "-o", "max_bars=5", "-w", "4",
            "--start", "2000-01-03", "--end", "2024-01-01"]
    with fresh_home():
        try:
            ids = start_jobs([[f"P{j}S{k}" for k in range(4)] + opts for j in range(3)])
            for job in ids:
                wait_running(job, min_requests=1)
            first: dict[str, tuple[float, int]] = {}
            last: dict[str, tuple[float, int]] = {}
            w0 = time.time()
            r0 = None
            while True:
                now = time.time()
                states = {j: json.loads((paths.job_dir(j) / "state.json").read_bytes()) for j in ids}
                if r0 is None:
                    r0 = sum(s["requests"] for s in states.values())
                for j, s in states.items():
                    if s["status"] != "running":
                        raise RuntimeError(f"job {j} is {s['status']} inside the window")
                    point = (epoch(s["updated_at"]), s["requests"])
                    if point[0] >= w0:
                        first.setdefault(j, point)
                    last[j] = point
                if now - w0 >= duration:
                    r1, w1 = sum(s["requests"] for s in states.values()), now
                    break
                time.sleep(0.25)
        finally:
            stop_all()
        finals = [load_status(j).public() for j in ids]
    rates = [(last[j][1] - first[j][1]) / (last[j][0] - first[j][0]) for j in ids]
    total = sum(rates)
    simple = (r1 - r0) / (w1 - w0)
    throttled = sum(int(s["throttled"]) for s in finals)
    requests = sum(int(s["requests"]) for s in finals)
    statuses = sorted({s["status"] for s in finals})
    log(f"shared_pacing: {len(ids)} jobs, window {w1 - w0:.1f}s, per-job {[round(r, 2) for r in rates]}/s, "
        f"total {total:.2f}/s (simple {simple:.2f}/s); throttled {throttled} of {requests} requests; "
        f"final {statuses}")
    note = (f"per job {', '.join(f'{r:.2f}' for r in rates)} req/s over {w1 - w0:.0f} s; Σ Δrequests / poller "
            f"wall = {simple:.2f}/s; admitted (not throttled) ≈ {total * (1 - throttled / max(1, requests)):.2f}/s; "
            f"final status {'/'.join(statuses)}")
    return [
        Row(f"shared_pacing 3 jobs, demo rate_limit={LIMIT} ({duration:.0f} s)", f"{total:.2f} req/s",
            f"limit {LIMIT}/s", total / LIMIT, f">= {AIM}", total / LIMIT >= AIM, note=note),
        Row("shared_pacing throttled (whole run)", f"{throttled} throttled", f"of {requests} requests",
            throttled / requests if requests else None, "== 0", throttled == 0),
    ]


if __name__ == "__main__":
    standalone(run)
