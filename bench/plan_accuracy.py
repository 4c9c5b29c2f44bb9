"""plan_accuracy: `collect plan`'s requests and duration against the job `collect start` then runs.

A demo job under a rate limit (the pacing binds) and one without (the latency binds): plan first,
then run the same command as a real job (CLI subprocess, runner process) and compare what it
reports (`requests`, `elapsed_s`). Aims: requests equal; duration within 10 % of the real run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench._common import Row, fresh_home, log, standalone

CASES = [
    # label, symbols, extra args
    ("rate limit 4/s", 6, ["-o", "rate_limit=4", "-o", "latency_ms=20", "-w", "4"]),
    ("latency 150 ms", 8, ["-o", "latency_ms=150", "-w", "2"]),
]
WINDOW = ["-t", "1h", "--start", "2023-01-02", "--end", "2023-04-01", "-o", "max_bars=100"]


def collect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ktrdr_collect", *args], capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1"}, timeout=600, check=True)


def run(quick: bool = False) -> list[Row]:
    rows = []
    for label, n, extra in CASES:
        symbols = [f"P{i:02d}" for i in range(n // 2 if quick else n)]
        with fresh_home():
            planned = json.loads(collect("plan", *symbols, *WINDOW, *extra, "--json").stdout)
            collect("start", *symbols, *WINDOW, *extra, "-q")
            done = json.loads(collect("status", "last", "--json").stdout)
        log(f"plan_accuracy {label}: planned {planned['requests']} req / {planned['duration_s']} s, "
            f"ran {done['requests']} req / {done['elapsed_s']} s")
        rows.append(Row(f"plan_accuracy {label}: requests", f"{planned['requests']} planned",
                        f"{done['requests']} made", None, "equal", planned["requests"] == done["requests"]))
        ratio = planned["duration_s"] / done["elapsed_s"]
        rows.append(Row(f"plan_accuracy {label}: duration", f"{planned['duration_s']:.2f} s planned",
                        f"{done['elapsed_s']:.2f} s ran", ratio, "0.9-1.1x", 0.9 <= ratio <= 1.1))
    return rows


if __name__ == "__main__":
    standalone(run)
