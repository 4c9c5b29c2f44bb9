"""parquet_scale (issue 12 item 6): Parquet stays O(change) as a 1m series grows to 10 years.

1. Build: 10 years of 1m demo bars (~5.3M; --quick: 1 year) written segment by segment (1000 bars,
   as the engine writes them) through ParquetStore.write and, interleaved with the same bars,
   through CsvStore.write: process CPU per bar of each (pyarrow's threads included), and the ratio.
   Both stores write one small warm-up series first, so one-time imports are not counted.
2. Append: one more month (43,200 bars, 1000-bar segments) to a copy of the 10-year dataset and to
   a 1-month one, each in a fresh process (what a new job does): CPU of the month's writes and
   peak RSS growth during them (Linux: VmHWM after resetting it with /proc/self/clear_refs <- 5,
   minus VmRSS just before). Three trials each on fresh copies; medians.

Correctness is checked on the way: row counts, last bars and the appended month read back equal
to the bars written. The datasets live in a fresh temp home on disk (fsync wall time is not CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import Row, fresh_home, log, median, standalone

ROOT = Path(__file__).resolve().parent.parent
KEY = ("demo", "1m", "BIG")
START = 1262304000  # 2010-01-01T00:00:00Z
STEP = 60
SEGMENT = 1000
MONTH = 43_200
BUILD_AIM = 1.2
APPEND_AIM = 2.0
MEM_AIM_MB = 50.0
TRIALS = 3


def series_bars(t0: int, t1: int):  # noqa: ANN201  (Columns, or a list of tuples on older trees)
    from ktrdr_collect.providers.demo import DemoSeries

    series = DemoSeries(KEY[2], KEY[1])
    make = getattr(series, "columns", series.bars)
    return make(range(t0, t1, STEP))


def segments(t0: int, t1: int):  # noqa: ANN201
    for lo in range(t0, t1, SEGMENT * STEP):
        hi = min(t1, lo + SEGMENT * STEP)
        yield lo, hi, series_bars(lo, hi)


def warm_up(store_class: type) -> None:
    """One small write through a store of this class elsewhere (lazy imports, first-call set-up)."""
    scratch = Path(tempfile.mkdtemp(prefix="ktrdr-bench-warm-"))
    try:
        store_class(scratch).write(*KEY, series_bars(START, START + 10 * STEP), (START, START + 10 * STEP))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def build(root: Path, bars_total: int, with_csv: bool) -> dict:
    """Write ``bars_total`` bars from START into a Parquet store (and a CSV store) under ``root``."""
    from ktrdr_collect.storage.csv_store import CsvStore
    from ktrdr_collect.storage.parquet_store import ParquetStore

    pq_store = ParquetStore(root / "parquet")
    csv_store = CsvStore(root / "csv") if with_csv else None
    warm_up(ParquetStore)
    if csv_store is not None:
        warm_up(CsvStore)
    end = START + bars_total * STEP
    cpu_pq = cpu_csv = 0.0
    writes: list[float] = []
    for lo, hi, bars in segments(START, end):
        if csv_store is not None:
            c0 = time.process_time()
            csv_store.write(*KEY, bars, (lo, hi))
            cpu_csv += time.process_time() - c0
        c0 = time.process_time()
        pq_store.write(*KEY, bars, (lo, hi))
        took = time.process_time() - c0
        cpu_pq += took
        writes.append(took)
    rows = pq_store.row_count(*KEY)
    assert rows == bars_total, (rows, bars_total)
    assert pq_store.last_ts(*KEY) == end - STEP
    if csv_store is not None:
        assert csv_store.last_ts(*KEY) == end - STEP
    parts = sorted(os.listdir(pq_store.path(*KEY)))
    per_month = -(-MONTH // SEGMENT)
    months = [sum(writes[i : i + per_month]) for i in range(0, max(1, len(writes) - per_month + 1))]
    return {"bars": bars_total, "cpu_pq": cpu_pq, "cpu_csv": cpu_csv, "worst_write_pq": max(writes),
            "worst_month_pq": max(months), "median_month_pq": median(months),
            "parts": len(parts), "pq_mb": pq_store.size(*KEY) / 1e6,
            "csv_mb": (csv_store.path(*KEY).stat().st_size / 1e6) if csv_store is not None else None}


def append_child(root: Path, stored_bars: int) -> dict:
    """In a fresh process: append one month after ``stored_bars`` bars; CPU and peak RSS growth."""
    from bench.large_series import current_rss_kb, peak_rss_kb, reset_peak_rss
    from ktrdr_collect.storage.parquet_store import ParquetStore

    store = ParquetStore(root)
    warm_up(ParquetStore)
    lo0 = START + stored_bars * STEP
    hi0 = lo0 + MONTH * STEP
    month = list(segments(lo0, hi0))  # synthesised before the measurement
    parts_before = len(os.listdir(store.path(*KEY)))
    hwm = reset_peak_rss()
    rss0 = current_rss_kb() if hwm else 0
    cpu = []
    for lo, hi, bars in month:
        c0 = time.process_time()
        store.write(*KEY, bars, (lo, hi))
        cpu.append(time.process_time() - c0)
    grew_kb = (peak_rss_kb() - rss0) if hwm else None
    got = store.read(*KEY, start=lo0)
    want = [tuple(bar) for _, _, bars in month for bar in bars]
    assert got == want, "the appended month does not read back as written"
    assert store.row_count(*KEY) == stored_bars + MONTH
    return {"cpu": sum(cpu), "worst": max(cpu), "grew_kb": grew_kb, "parts_before": parts_before,
            "parts_after": len(os.listdir(store.path(*KEY)))}


def run_append(dataset: Path, scratch: Path, stored_bars: int) -> dict:
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(dataset, scratch, symlinks=True)
    proc = subprocess.run([sys.executable, "-m", "bench.parquet_scale", "--append", str(scratch), str(stored_bars)],
                          cwd=ROOT, capture_output=True, text=True, env=os.environ.copy(), timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"parquet_scale append child failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(scratch, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[Row]:
    years = 1 if quick else 10
    total = years * 365 * 1440
    with fresh_home(prefix="ktrdr-bench-parquet-") as home:
        t0 = time.perf_counter()
        big = build(home / "big", total, with_csv=True)
        log(f"parquet_scale: built {years}y ({total} bars) in {time.perf_counter() - t0:.0f}s: "
            f"{big['parts']} parts, {big['pq_mb']:.0f} MB parquet, {big['csv_mb']:.0f} MB csv")
        shutil.rmtree(home / "big" / "csv")
        build(home / "small", MONTH, with_csv=False)
        trials_big, trials_small = [], []
        for _ in range(TRIALS):  # interleaved, so that the machine's load falls on both alike
            trials_big.append(run_append(home / "big" / "parquet", home / "scratch", total))
            trials_small.append(run_append(home / "small" / "parquet", home / "scratch", MONTH))
    us_pq, us_csv = big["cpu_pq"] / total * 1e6, big["cpu_csv"] / total * 1e6
    cpu_big = median([t["cpu"] for t in trials_big])
    cpu_small = median([t["cpu"] for t in trials_small])
    grew = [t["grew_kb"] for t in trials_big if t["grew_kb"] is not None]
    grew_mb = max(grew) / 1024 if grew else None
    grew_small = [t["grew_kb"] for t in trials_small if t["grew_kb"] is not None]
    log(f"parquet_scale: append month cpu {[round(t['cpu'], 3) for t in trials_big]} ({years}y) vs "
        f"{[round(t['cpu'], 3) for t in trials_small]} (1 month); rss growth kB {grew} vs {grew_small}")
    label = f"{years}y 1m ({total} bars, {SEGMENT}-bar segments)"
    return [
        Row(f"parquet_scale build {label}: CPU/bar", f"{us_pq:.2f} us", f"csv {us_csv:.2f} us",
            us_pq / us_csv, f"<= {BUILD_AIM}", us_pq / us_csv <= BUILD_AIM,
            note=f"ParquetStore.write vs CsvStore.write of the same bars, interleaved, process CPU; "
                 f"{big['parts']} parts, {big['pq_mb']:.0f} MB vs csv {big['csv_mb']:.0f} MB; "
                 f"slowest single Parquet write {big['worst_write_pq'] * 1000:.0f} ms"),
        Row(f"parquet_scale append a month to {years}y vs to 1 month: CPU",
            f"{cpu_big * 1000:.0f} ms", f"1 month {cpu_small * 1000:.0f} ms", cpu_big / cpu_small,
            f"<= {APPEND_AIM}", cpu_big / cpu_small <= APPEND_AIM,
            note=f"median of {TRIALS} fresh processes each; slowest write "
                 f"{max(t['worst'] for t in trials_big) * 1000:.0f} ms vs "
                 f"{max(t['worst'] for t in trials_small) * 1000:.0f} ms; parts "
                 f"{trials_big[0]['parts_before']} -> {trials_big[0]['parts_after']}"),
        Row("parquet_scale append a month: peak RSS growth", "-" if grew_mb is None else f"{grew_mb:.1f} MB",
            "-" if not grew_small else f"1 month {max(grew_small) / 1024:.1f} MB", None, f"<= {MEM_AIM_MB:.0f} MB",
            None if grew_mb is None else grew_mb <= MEM_AIM_MB,
            note="worst of the trials; VmHWM after reset (clear_refs 5) minus VmRSS before the month's writes"),
        Row(f"parquet_scale worst month of writes while building {years}y: CPU",
            f"{big['worst_month_pq'] * 1000:.0f} ms", f"1 month {cpu_small * 1000:.0f} ms",
            big["worst_month_pq"] / cpu_small, "(info)", None,
            note=f"the most CPU any {-(-MONTH // SEGMENT)} consecutive Parquet writes of the build took (a month that "
                 f"lands on a merge into a full part); median month {big['median_month_pq'] * 1000:.0f} ms; "
                 "the build's process is warm, the 1-month append's fresh"),
    ]


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--append":
        print(json.dumps(append_child(Path(sys.argv[2]), int(sys.argv[3]))))
    else:
        standalone(run)
