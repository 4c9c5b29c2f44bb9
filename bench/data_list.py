"""data_list: `collect data list` over a data dir of 10,000 stored series.

The series are written straight into a fresh data dir the way the CSV store writes them (a data
file and its coverage record; the bytes of a real store write, copied under 10,000 names): 1d
bars for 2019-01-01..2024-01-01 (1,304 rows, ~72 KB each: ~700 MB in all; --quick: 2,000 series
over 1 year). Some of them get a hole (a few rows cut from the middle of the file), so that the
holes column has something to count.

Timed as whole processes (`python -m ktrdr_collect data list`, spawn to exit, output captured),
wall time and the child's CPU time (user + sys: the machine is shared, so wall time carries other
tenants' load), >= 5 rounds (3 with --quick), medians; baseline `python -c pass` in the same rounds:

- cold: the listing cache (`.ktrdr/inventory.json`, see storage.inventory.Index) deleted first, so
  every file is read (its rows counted from line ends) — the first listing after a job;
- warm: the human table and `--json` with the cache in place — every listing after that (each
  series costs two stat calls while its files are unchanged).

The page cache is warm in both (one warm-up run first). The outputs are checked: the series count,
and for every series with a hole, holes = rows cut. Aim: warm <= 1 s (issue 11); cold is info.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench._common import Row, fmt_s, fresh_home, log, median
from ktrdr_collect.storage.inventory import INDEX_FILE

AIM_S = 1.0
START, END = "2019-01-01", "2024-01-01"


def write_series(data: Path, n: int, start: str, end: str) -> dict[str, int]:
    """n CSV series of demo 1d bars; returns {symbol: rows cut} for those with a hole."""
    from ktrdr_collect.providers.demo import DemoProvider
    from ktrdr_collect.storage.csv_store import CsvStore
    from ktrdr_collect.storage.timeframes import parse_ts

    lo, hi = parse_ts(start + "T00:00:00Z"), parse_ts(end + "T00:00:00Z")
    from datetime import UTC, datetime

    from ktrdr_collect.engine.engine import ProcessingEngine

    store = CsvStore(data / "template")
    engine = ProcessingEngine(DemoProvider({"latency_ms": 0, "max_bars": 100_000}), store, workers=1)
    (result,) = engine.process_batch(["BENCH"], "1d", datetime.fromtimestamp(lo, UTC), datetime.fromtimestamp(hi, UTC))
    assert result.status == "completed", result
    body = store.path("demo", "1d", "BENCH").read_bytes()
    record = store.coverage_path("demo", "1d", "BENCH").read_bytes()
    lines = body.splitlines(keepends=True)
    holed = b"".join(lines[:200] + lines[205:])  # 5 bars cut from inside the fetched range
    folder = data / "demo" / "1d"
    (folder / ".ktrdr").mkdir(parents=True, exist_ok=True)
    holes: dict[str, int] = {}
    for i in range(n):
        symbol = f"S{i:05d}"
        with_hole = i % 50 == 7
        (folder / f"{symbol}.csv").write_bytes(holed if with_hole else body)
        (folder / ".ktrdr" / f"{symbol}.coverage.json").write_bytes(record)
        if with_hole:
            holes[symbol] = 5
    import shutil

    shutil.rmtree(data / "template")
    return holes


def run_cli(*args: str) -> tuple[float, float, str]:
    """(wall, child CPU seconds, stdout) of one `collect` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ktrdr_collect", *args], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"collect {' '.join(args)} exited {r.returncode}: {r.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, r.stdout


def run(quick: bool = False) -> list[Row]:
    n = 2_000 if quick else 10_000
    start = "2023-01-01" if quick else START
    rounds = 3 if quick else 5
    with fresh_home() as home:
        data = home / "data"
        log(f"data_list: writing {n:,} series ...")
        holes = write_series(data, n, start, END)
        size = sum(f.stat().st_size for f in (data / "demo" / "1d").glob("*.csv"))
        cache = data / "demo" / "1d" / ".ktrdr" / INDEX_FILE
        log(f"data_list: {size / 1e6:.0f} MB of CSV; warming up")
        run_cli("data", "list")
        times: dict[str, list[tuple[float, float]]] = {"cold": [], "table": [], "json": [], "python": []}
        outputs: dict[str, str] = {}
        for _ in range(rounds):
            cache.unlink()
            wall, cpu, outputs["cold"] = run_cli("data", "list")
            times["cold"].append((wall, cpu))
            assert cache.exists()
            wall, cpu, outputs["table"] = run_cli("data", "list")
            times["table"].append((wall, cpu))
            wall, cpu, outputs["json"] = run_cli("data", "list", "--json")
            times["json"].append((wall, cpu))
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            times["python"].append((time.perf_counter() - t0, after.ru_utime - before.ru_utime
                                    + after.ru_stime - before.ru_stime))
        rows = json.loads(outputs["json"])
        ok_count = len(rows) == n and f"{n:,} series in" in outputs["table"] and outputs["cold"] == outputs["table"]
        ok_holes = all(r["holes"] == holes.get(r["symbol"], 0) for r in rows)
        per_file_rows = rows[0]["rows"]
    base = median([w for w, _ in times["python"]])
    note = (f"{n:,} CSV series, {per_file_rows:,} rows each, {size / 1e6:.0f} MB; output checked: count "
            f"{'ok' if ok_count else 'WRONG'}, holes {'ok' if ok_holes else 'WRONG'}, cold == warm "
            f"{'ok' if outputs['cold'] == outputs['table'] else 'WRONG'}")
    out = []
    for what, label in (("table", "warm, table"), ("json", "warm, --json"), ("cold", "cold, table")):
        wall = median([w for w, _ in times[what]])
        cpu = median([c for _, c in times[what]])
        right = ok_count and ok_holes
        ok = (wall <= AIM_S and right) if what != "cold" else (None if right else False)
        aim = f"<= {AIM_S:.0f} s" if what != "cold" else "(info)"
        out.append(Row(f"data_list {n:,} series ({label})", f"{fmt_s(wall)} (CPU {fmt_s(cpu)})",
                       f"python -c pass {fmt_s(base)}", wall / AIM_S, aim, ok, note=note))
    return out


if __name__ == "__main__":
    from bench._common import standalone

    standalone(run)
