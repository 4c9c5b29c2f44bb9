"""data_list: `collect data list` over a data dir of 10,000 stored series.

The series are written straight into a fresh data dir as a job leaves them: the bytes of a real
store write (demo 1d bars 2019-01-01..2024-01-01: 1,304 rows, ~72 KB each, ~720 MB in all;
--quick: 2,000 series over 1 year) under 10,000 names, each with its coverage record (the ranges,
and the rows, size, time and inode of its file). Every 50th has a hole (5 rows cut from inside
its fetched range), so that the holes column has something to count.

Timed as whole processes (`python -m ktrdr_collect data list`, spawn to exit, output captured),
wall time and the child's CPU time (user + sys: the machine is shared, so wall time carries other
tenants' load), >= 5 rounds (3 with --quick) in rotating order, medians; baseline `python -c pass`:

- warm: the human table and `--json`, a listing done before;
- cold: the listing cache (`.ktrdr/inventory.json`) deleted first: the first listing after a job.
  With records as a job leaves them both read each record and stat each file (no data file is
  opened; only series whose rows had to be counted are cached);
- cold, rows counted: the records stripped of their file stats (as older versions or data copied
  in leave them), the cache deleted: every file is read and its line ends counted (the listing
  after that uses the cache: two stat calls a series).

The page cache is warm in all (one warm-up run first). The outputs are checked: the series
count, every case's table identical, and for every series with a hole, holes = rows cut. Aim
(issue 11): <= 1 s for warm and cold; the counted case is info.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench._common import Row, fmt_s, fresh_home, log, median
from ktrdr_collect.storage.inventory import INDEX_FILE

AIM_S = 1.0
START, END = "2019-01-01", "2024-01-01"


def write_series(data: Path, n: int, start: str, end: str) -> dict[str, int]:
    """n CSV series of demo 1d bars, each with the coverage record a job leaves (its ranges, and
    the rows, size, time and inode of its file); returns {symbol: rows cut} for those with a hole."""
    from datetime import UTC, datetime

    from ktrdr_collect.engine.engine import ProcessingEngine
    from ktrdr_collect.providers.demo import DemoProvider
    from ktrdr_collect.storage import series
    from ktrdr_collect.storage.csv_store import CsvStore
    from ktrdr_collect.storage.timeframes import parse_ts

    lo, hi = parse_ts(start + "T00:00:00Z"), parse_ts(end + "T00:00:00Z")
    store = CsvStore(data / "template")
    engine = ProcessingEngine(DemoProvider({"latency_ms": 0, "max_bars": 100_000}), store, workers=1)
    (result,) = engine.process_batch(["BENCH"], "1d", datetime.fromtimestamp(lo, UTC), datetime.fromtimestamp(hi, UTC))
    assert result.status == "completed", result
    body = store.path("demo", "1d", "BENCH").read_bytes()
    ranges = store.coverage("demo", "1d", "BENCH")
    lines = body.splitlines(keepends=True)
    holed = b"".join(lines[:200] + lines[205:])  # 5 bars cut from inside the fetched range
    folder = data / "demo" / "1d"
    (folder / ".ktrdr").mkdir(parents=True, exist_ok=True)
    holes: dict[str, int] = {}
    for i in range(n):
        symbol = f"S{i:05d}"
        with_hole = i % 50 == 7
        content = holed if with_hole else body
        path = folder / f"{symbol}.csv"
        path.write_bytes(content)
        bars = store_bars_of(content)
        stats = series.FileStats.of(len(bars), os.stat(path), bars[0], bars[-1])
        series.save_coverage_file(folder / ".ktrdr" / f"{symbol}.coverage.json", ranges, stats=stats)
        if with_hole:
            holes[symbol] = 5
    shutil.rmtree(data / "template")
    return holes


def store_bars_of(content: bytes) -> list[int]:
    """The bar times of a CSV's bytes."""
    from ktrdr_collect.storage.timeframes import parse_ts

    return [parse_ts(line.split(b",", 1)[0].decode()) for line in content.splitlines()[1:]]


def forget_file_stats(data: Path) -> None:
    """Records as older versions (or data copied in) leave them: ranges only, rows unknown."""
    for record in (data / "demo" / "1d" / ".ktrdr").glob("*.coverage.json"):
        doc = json.loads(record.read_bytes())
        doc.pop("file", None)
        record.write_text(json.dumps(doc))


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


def timed_rounds(cases: dict[str, list[str]], rounds: int, cache: Path) -> tuple[dict[str, list[tuple[float, float]]],
                                                                                dict[str, str]]:
    """Each case `rounds` times, in rotating order; a case named cold* runs without the cache."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    outputs: dict[str, str] = {}
    for _ in range(rounds):
        for name, args in cases.items():
            if name.startswith("cold"):
                cache.unlink(missing_ok=True)
            wall, cpu, outputs[name] = run_cli(*args)
            times[name].append((wall, cpu))
    return times, outputs


def python_baseline(rounds: int) -> float:
    walls = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        walls.append(time.perf_counter() - t0)
    return median(walls)


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
        cases = {"cold": ["data", "list"], "table": ["data", "list"], "json": ["data", "list", "--json"]}
        times, outputs = timed_rounds(cases, rounds, cache)
        log("data_list: records without file stats (older versions, copied data)")
        forget_file_stats(data)
        more, counted = timed_rounds({"cold-count": ["data", "list"]}, rounds, cache)
        times.update(more)
        outputs.update(counted)
        base = python_baseline(rounds)
        rows = json.loads(outputs["json"])
        same = outputs["cold"] == outputs["table"] == outputs["cold-count"]
        ok_count = len(rows) == n and f"{n:,} series in" in outputs["table"] and same
        ok_holes = all(r["holes"] == holes.get(r["symbol"], 0) for r in rows)
        per_file_rows = rows[0]["rows"]
    note = (f"{n:,} CSV series, {per_file_rows:,} rows each, {size / 1e6:.0f} MB; output checked: count "
            f"{'ok' if ok_count else 'WRONG'}, holes {'ok' if ok_holes else 'WRONG'}, every case's table the same "
            f"{'ok' if same else 'WRONG'}")
    out = []
    labels = (("table", "warm, table"), ("json", "warm, --json"), ("cold", "cold, table"),
              ("cold-count", "cold, rows counted"))
    for what, label in labels:
        wall = median([w for w, _ in times[what]])
        cpu = median([c for _, c in times[what]])
        right = ok_count and ok_holes
        aimed = what != "cold-count"
        ok = (wall <= AIM_S and right) if aimed else (None if right else False)
        out.append(Row(f"data_list {n:,} series ({label})", f"{fmt_s(wall)} (CPU {fmt_s(cpu)})",
                       f"python -c pass {fmt_s(base)}", wall / AIM_S, f"<= {AIM_S:.0f} s" if aimed else "(info)",
                       ok, note=note))
    return out


if __name__ == "__main__":
    from bench._common import standalone

    standalone(run)
