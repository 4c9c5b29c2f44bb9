"""startup: whole-process time of `collect status JOB --json` against bare interpreters.

One finished demo job in a fresh home, then >= 15 rounds (5 with --quick) of three commands run
back to back in rotating order, each timed from spawn to exit (`subprocess.run`, output captured):
`python -m ktrdr_collect status JOB --json`, `python -c pass` and a bare Typer hello-world
(`import typer; app = typer.Typer(); @app.command() def hello(): ...; app()` in a temp file).
Medians are compared: aim median <= 150 ms for `status`. A note gives the five largest cumulative
imports of `ktrdr_collect.cli.main` from `python -X importtime` (best of 3 per module).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import Row, fmt_s, fresh_home, log, median, standalone

AIM_S = 0.150

HELLO = """import typer

app = typer.Typer()


@app.command()
def hello() -> None:
    print("hi")


app()
"""


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=os.environ.copy())
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-4:])} exited {proc.returncode}: {proc.stderr.decode()[-300:]}")
    return dt


def import_top(module: str, runs: int = 3, top: int = 5) -> tuple[float, list[tuple[str, float]]]:
    """(total, largest cumulative import times) in seconds for `import module`, from
    `python -X importtime`, minimum per module over `runs` runs; the module and its parent
    packages (which only repeat the total) are left out of the list."""
    best = _importtime(f"import {module}", runs)
    interpreter = _importtime("pass", 1)  # site & co.: imported before any script, not by the module
    chain = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)} | set(interpreter)
    total = best.get(module, 0) / 1e6
    items = sorted(((k, v / 1e6) for k, v in best.items() if k not in chain), key=lambda kv: -kv[1])
    return total, items[:top]


def _importtime(code: str, runs: int) -> dict[str, int]:
    best: dict[str, int] = {}
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
        for line in proc.stderr.splitlines():
            parts = line.split("|")
            if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
                continue
            name, cum_us = parts[2].strip(), int(parts[1])
            best[name] = min(best.get(name, cum_us), cum_us)
    return best


def run(quick: bool = False) -> list[Row]:
    rounds = 5 if quick else 15
    with fresh_home() as home, tempfile.TemporaryDirectory(prefix="ktrdr-bench-typer-") as tmp:
        hello = Path(tmp) / "hello.py"
        hello.write_text(HELLO)
        proc = subprocess.run([sys.executable, "-m", "ktrdr_collect", "start", "STUP", "--days", "30",
                               "-o", "latency_ms=0", "--json", "-q"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"collect start failed ({proc.returncode}): {proc.stderr.strip()}")
        out = subprocess.run([sys.executable, "-m", "ktrdr_collect", "list", "--json"], capture_output=True,
                             text=True, check=True).stdout
        job = json.loads(out)[0]["id"]
        commands = {
            "status": [sys.executable, "-m", "ktrdr_collect", "status", job, "--json"],
            "pass": [sys.executable, "-c", "pass"],
            "typer": [sys.executable, str(hello)],
        }
        for cmd in commands.values():  # warm the page cache and __pycache__
            timed(cmd)
        samples: dict[str, list[float]] = {k: [] for k in commands}
        order = list(commands)
        for i in range(rounds):
            for k in order[i % 3:] + order[:i % 3]:
                samples[k].append(timed(commands[k]))
        status_json = json.loads(subprocess.run(commands["status"], capture_output=True, text=True).stdout)
        assert status_json["id"] == job and status_json["status"] == "completed", status_json["status"]
        del home
    total, top = import_top("ktrdr_collect.cli.main", runs=2 if quick else 3)
    st, bare, typ = (median(samples[k]) for k in ("status", "pass", "typer"))
    log(f"startup: status {fmt_s(st)}, python -c pass {fmt_s(bare)}, typer hello {fmt_s(typ)}")
    spread = lambda xs: f"{fmt_s(min(xs))}..{fmt_s(max(xs))}"  # noqa: E731
    note = (f"n={rounds} each, ranges: status {spread(samples['status'])}, pass {spread(samples['pass'])}, "
            f"typer {spread(samples['typer'])}; above bare Typer: {fmt_s(st - typ)}")
    imports = f"total {total * 1000:.0f} ms; " + ", ".join(f"{name} {v * 1000:.0f} ms" for name, v in top)
    return [
        Row(f"startup status JOB --json (median of {rounds})", fmt_s(st), f"python -c pass {fmt_s(bare)}",
            st / bare, "median <= 150 ms", st <= AIM_S, note=note),
        Row("startup status JOB --json vs Typer hello", fmt_s(st), f"typer hello {fmt_s(typ)}", st / typ,
            "(info) vs bare Typer", None,
            note=f"-X importtime top 5 cumulative (import ktrdr_collect.cli.main): {imports}"),
    ]

if __name__ == "__main__":
    standalone(run)
