"""history_100k: `status last`, `list` and an index rebuild with 100,000 finished jobs in home.

The job folders are written directly, as bench/history_scale.py writes them (`make_jobs`: a valid
job.json, state.json and log each; 1-20 symbols, mostly completed), on tmpfs when there is one
(--quick: 20,000 jobs). Each command runs as a whole process (`python -m ktrdr_collect ...`,
spawn to exit); its CPU (user + system) and peak RSS come from `os.wait4`.

- index rebuild: the first `list --limit 20 --json` (no index yet: every folder read once); the
  same again after deleting the index. Aim: peak RSS <= 200 MB.
- `status last --json`, `list --limit 20 --json` and `status <id prefix> --json` with the index
  built: median CPU of 5 runs (3 with --quick). Aim: <= 0.3 s CPU each.
- `python -c "import ktrdr_collect.cli.main"` as the floor every command pays.

Outputs are checked: `status last` is the newest job, `list` the 20 newest ids in order, the
prefix resolves to its job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from bench._common import Row, fmt_s, fresh_home, log, median, standalone
from bench.history_scale import make_jobs

CPU_AIM_S = 0.3
RSS_AIM_MB = 200.0


def measure(cmd: list[str]) -> tuple[float, float, float, str]:
    """(wall s, CPU s = user + system, peak RSS MB, stdout) of a whole command run to its end."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, env=os.environ.copy())
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.stderr.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} exited {proc.returncode}: {err.decode()[-300:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text


def run(quick: bool = False) -> list[Row]:
    n = 20_000 if quick else 100_000
    rounds = 3 if quick else 5
    cli = [sys.executable, "-m", "ktrdr_collect"]
    problems: list[str] = []
    with fresh_home(prefix="ktrdr-bench-h100k-", memory=True) as home:
        t0 = time.perf_counter()
        ids, _ = make_jobs(n, seed=12)
        log(f"history_100k: wrote {n} job folders in {time.perf_counter() - t0:.1f}s")
        newest = sorted(ids, reverse=True)
        prefix = newest[n // 2][:10]  # unique: 8 stamp digits and 2 random ones
        cmds = {
            "status last": [*cli, "status", "last", "--json"],
            "list --limit 20": [*cli, "list", "--limit", "20", "--json"],
            f"status {prefix}": [*cli, "status", prefix, "--json"],
            "import floor": [sys.executable, "-c", "import ktrdr_collect.cli.main"],
        }
        listing = cmds["list --limit 20"]

        def check(name: str, text: str) -> None:
            data = json.loads(text) if name != "import floor" else None
            if name.startswith("list") and [j["id"] for j in data] != newest[:20]:
                problems.append(f"{name}: not the 20 newest ids in order")
            if name == "status last" and data["id"] != newest[0]:
                problems.append(f"status last: {data['id']}, expected {newest[0]}")
            if name == f"status {prefix}" and data["id"] != newest[n // 2]:
                problems.append(f"{name}: {data['id']}")

        builds = []
        for _ in range(2):
            (home / "jobs" / "index.sqlite").unlink(missing_ok=True)
            wall, cpu, rss, text = measure(listing)
            check("list --limit 20", text)
            builds.append((wall, cpu, rss))
            log(f"history_100k: index rebuild {wall:.1f}s wall, {cpu:.1f}s CPU, {rss:.0f} MB")
        samples: dict[str, list[tuple[float, float, float]]] = {k: [] for k in cmds}
        order = list(cmds)
        for i in range(rounds):
            for name in order[i % len(order):] + order[:i % len(order)]:
                wall, cpu, rss, text = measure(cmds[name])
                check(name, text)
                samples[name].append((wall, cpu, rss))
    floor = median([c for _, c, _ in samples["import floor"]])
    check_note = "outputs correct" if not problems else "; ".join(dict.fromkeys(problems))
    rows = []
    for name in order[:-1]:
        cpu = median([c for _, c, _ in samples[name]])
        wall = median([w for w, _, _ in samples[name]])
        rss = max(r for _, _, r in samples[name])
        rows.append(Row(f"history_100k {name} --json, {n} jobs (CPU, median {rounds})", fmt_s(cpu),
                        f"import floor {fmt_s(floor)}", cpu / floor, f"<= {CPU_AIM_S} s CPU",
                        cpu <= CPU_AIM_S and not problems,
                        note=f"{check_note}; wall {fmt_s(wall)}, peak RSS {rss:.0f} MB"))
    worst = max(builds, key=lambda b: b[2])
    rows.append(Row(f"history_100k index rebuild ({n} jobs, first list)", f"{worst[2]:.0f} MB peak RSS",
                    f"import floor {max(r for _, _, r in samples['import floor']):.0f} MB", None,
                    f"<= {RSS_AIM_MB:.0f} MB", worst[2] <= RSS_AIM_MB and not problems,
                    note="; ".join(f"build {i + 1}: {w:.1f} s wall, {c:.1f} s CPU, {r:.0f} MB"
                                   for i, (w, c, r) in enumerate(builds))))
    return rows


if __name__ == "__main__":
    standalone(run)
