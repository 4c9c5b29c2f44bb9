"""Shared helpers: result rows, the table, fresh temp homes, statistics."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "KTRDR_COLLECT_HOME"


@dataclass
class Row:
    """One line of the table.

    value/baseline are already-formatted measurements; ratio is a float (None when not
    meaningful); ok is True (pass), False (miss) or None (informational, no aim).
    """

    benchmark: str
    value: str
    baseline: str
    ratio: float | None
    aim: str
    ok: bool | None
    note: str = ""


@contextlib.contextmanager
def fresh_home(prefix: str = "ktrdr-bench-", memory: bool = False) -> Iterator[Path]:
    """A fresh temp dir set as KTRDR_COLLECT_HOME for this process (and children); removed after.

    memory=True puts it on tmpfs (/dev/shm, where fsync costs nothing) if there is one: for
    benchmarks that measure CPU overhead and must not be drowned by disk noise.
    """
    base = "/dev/shm" if memory and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    old = os.environ.get(HOME_ENV)
    os.environ[HOME_ENV] = str(tmp)
    try:
        yield tmp
    finally:
        if old is None:
            os.environ.pop(HOME_ENV, None)
        else:
            os.environ[HOME_ENV] = old
        shutil.rmtree(tmp, ignore_errors=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) — p99 of 50 samples is the maximum."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def fmt_s(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(r: float | None) -> str:
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return "-"
    return f"{r:.3f}"


def format_table(rows: list[Row]) -> str:
    head = ("benchmark", "measured", "baseline (same run)", "ratio", "aim", "result")
    body = []
    for r in rows:
        result = "info" if r.ok is None else ("pass" if r.ok else "MISS")
        body.append((r.benchmark, r.value, r.baseline, fmt_ratio(r.ratio), r.aim, result))
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    notes = [f"  * {r.benchmark}: {r.note}" for r in rows if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def standalone(run: Callable[[bool], list[Row]]) -> None:
    """`python -m bench.<name> [--quick]`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes / fewer trials")
    args = parser.parse_args()
    rows = run(args.quick)
    print(format_table(rows))
    sys.exit(0 if all(r.ok is not False for r in rows) else 1)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def timed(cmd: list[str]) -> tuple[float, str]:
    """Run a command to the end; (wall seconds, stdout). A failing command is an error."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return dt, proc.stdout
