"""large_series: one symbol, 1m bars over 5 years (~509k bars, ~509 segments of max_bars=1000),
demo latency 0, one worker, CsvStore on a fresh temp dir.

Runs in a child process so that memory is that run's alone. Peak memory = the child's peak RSS
during the batch minus its RSS just before it: on Linux the kernel's peak mark is reset first
(`/proc/self/clear_refs` <- 5) and VmHWM is read after the batch; elsewhere it falls back to the
resource.getrusage(RUSAGE_SELF).ru_maxrss delta (a lower bound, since the import-time peak
counts). Its baseline is what the whole series would take held in memory as bar tuples
(tracemalloc size of one 1000-bar segment x segments), so ratio << 1 means the engine streams
segment by segment.

Append cost: the store's write method is wrapped to time each segment write (thread CPU time and
wall time) and to count the bytes it reads (Linux /proc/self/io rchar delta: exact, noise-free).
The median over the last 10 % of segments divided by the median over the first 10 % should be ~1
(appends neither re-read nor rewrite the growing file). CPU time carries the timing aim: the wall
time of a write is dominated by 3 fsyncs whose cost follows the shared disk's load.

Total time is compared with the time just to synthesise the same bars (DemoSeries.bar for every
timestamp), the provider's own CPU floor.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench._common import Row, fmt_s, fresh_home, log, median, standalone

ROOT = Path(__file__).resolve().parent.parent
END = "2024-01-01"
MAX_BARS = 1000
SYMBOL = "BIG"
WRITE_AIM = 1.25
MEM_AIM = 0.25


def child(years: int) -> dict:
    import tracemalloc

    from ktrdr_collect.engine.engine import ProcessingEngine, to_epoch
    from ktrdr_collect.providers.demo import DemoProvider, DemoSeries
    from ktrdr_collect.storage.calendar import DEMO_CALENDAR
    from ktrdr_collect.storage.csv_store import CsvStore

    start = f"{2024 - years}-01-01"
    out: dict = {"years": years}
    with fresh_home() as home:
        store = CsvStore(home / "data")
        provider = DemoProvider({"latency_ms": 0, "max_bars": MAX_BARS})
        engine = ProcessingEngine(provider, store, workers=1)
        times: list[float] = []
        cpu_times: list[float] = []
        write = store.write

        read_bytes: list[int] = []

        def timed_write(*args, **kwargs):
            r0 = rchar()
            t0, c0 = time.perf_counter(), time.thread_time()
            written = write(*args, **kwargs)
            cpu_times.append(time.thread_time() - c0)
            times.append(time.perf_counter() - t0)
            read_bytes.append(rchar() - r0)
            return written

        store.write = timed_write  # type: ignore[method-assign]
        # the hot path's libraries load on a job's first segment: a fixed cost (~12 MB), not growth
        import msgspec  # noqa: F401

        import ktrdr_collect.storage.columns  # noqa: F401
        hwm_reset = reset_peak_rss()
        rss0 = current_rss_kb() if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        results = engine.process_batch([SYMBOL], "1m", start=start, end=END)
        out["total_s"] = time.perf_counter() - t0
        rss1 = peak_rss_kb() if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["rss_method"] = "VmHWM after reset - VmRSS before" if hwm_reset else "ru_maxrss delta"
        r = results[0]
        assert r.ok, r
        out.update(candles=r.candles, requests=r.requests, segments=r.segments_done, writes=times,
                   cpu_writes=cpu_times, read_bytes=read_bytes)
        out["rss_delta_kb"] = rss1 - rss0
        path = store.path("demo", "1m", SYMBOL)
        out["file_mb"] = path.stat().st_size / 1e6
        with open(path, "rb") as f:
            out["file_rows"] = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) - 1

    s, e = to_epoch(start), to_epoch(END)
    out["expected_bars"] = DEMO_CALENDAR.count("1m", s, e)
    # baseline: synthesising the bars alone
    series = DemoSeries(SYMBOL, "1m")
    t0 = time.perf_counter()
    for ts in DEMO_CALENDAR.bar_times("1m", s, e):
        series.bar(ts)
    out["gen_s"] = time.perf_counter() - t0
    # baseline: one segment's bars held in memory, x segments
    seg_start, seg_end = DEMO_CALENDAR.split("1m", s, e, MAX_BARS)[0]
    tracemalloc.start()
    seg = provider.fetch(SYMBOL, "1m", seg_start, seg_end, engine_token())
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    out["segment_bytes"] = held
    out["segment_len"] = len(seg)
    return out


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rchar() -> int:
    """Bytes this process has read through read() calls so far (Linux /proc/self/io), or -1."""
    try:
        with open("/proc/self/io", "rb") as f:
            for line in f:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux: clear_refs 5) so the peak is this batch's alone."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kb("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def current_rss_kb() -> int:
    return _status_kb("VmRSS")


def peak_rss_kb() -> int:
    return _status_kb("VmHWM")


def engine_token():
    from ktrdr_collect.engine.cancellation import CancellationToken

    return CancellationToken()


def run(quick: bool = False) -> list[Row]:
    years = 1 if quick else 5
    proc = subprocess.run([sys.executable, "-m", "bench.large_series", "--child", str(years)], cwd=ROOT,
                          capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"large_series child failed:\n{proc.stderr}")
    d = json.loads(proc.stdout.strip().splitlines()[-1])
    writes = d["writes"]
    k = max(1, len(writes) // 10)
    first, last = median(writes[:k]), median(writes[-k:])
    cpu = d["cpu_writes"]
    cfirst, clast = median(cpu[:k]), median(cpu[-k:])
    rb = d["read_bytes"]
    rfirst, rlast = median(rb[:k]), median(rb[-k:])
    full_series_mb = d["segment_bytes"] / d["segment_len"] * d["candles"] / 1e6
    rss_mb = d["rss_delta_kb"] / 1024
    ok_rows = d["file_rows"] == d["candles"] == d["expected_bars"]
    log(f"large_series: {d['candles']} bars, {d['requests']} requests, {d['segments']} segments, "
        f"{d['total_s']:.2f}s, file {d['file_mb']:.1f} MB / {d['file_rows']} rows, maxrss +{rss_mb:.1f} MB, "
        f"write first10% median {first * 1000:.2f} ms last10% {last * 1000:.2f} ms")
    label = f"large_series 1m {years}y ({d['candles']} bars, {d['segments']} seg)"
    return [
        Row(f"{label} total", fmt_s(d["total_s"]), f"bar synthesis only {fmt_s(d['gen_s'])}",
            d["total_s"] / d["gen_s"], "(info)", None,
            note=f"{d['total_s'] / d['candles'] * 1e6:.1f} us/bar end to end; file {d['file_mb']:.1f} MB, "
                 f"{d['file_rows']} rows (expected {d['expected_bars']}): {'ok' if ok_rows else 'MISMATCH'}"),
        Row("large_series peak RSS growth during batch", f"{rss_mb:.1f} MB",
            f"series in RAM {full_series_mb:.0f} MB", rss_mb / full_series_mb, f"<= {MEM_AIM}",
            rss_mb / full_series_mb <= MEM_AIM, note=f"method: {d['rss_method']}"),
        Row(f"large_series write CPU/segment last vs first {k}", f"{clast * 1000:.2f} ms",
            f"first {cfirst * 1000:.2f} ms", clast / cfirst, f"<= {WRITE_AIM} (~1)", clast / cfirst <= WRITE_AIM,
            note="median thread CPU time of CsvStore.write over the last 10% of segments vs the first 10% "
                 "(O(file) work would show here)"),
        Row(f"large_series bytes read/write last vs first {k}", f"{rlast / 1024:.1f} KiB",
            f"first {rfirst / 1024:.1f} KiB", rlast / rfirst if rfirst > 0 else None, "<= 1.25 (~1)",
            rfirst > 0 and rlast / rfirst <= WRITE_AIM,
            note=f"median bytes read (/proc/self/io rchar, includes reading /proc/self/io itself) per "
                 f"CsvStore.write; the file grows to {d['file_mb']:.1f} MB — exact, not noisy"),
        Row(f"large_series write wall/segment last vs first {k}", f"{last * 1000:.2f} ms",
            f"first {first * 1000:.2f} ms", last / first, "(info) ~1", None,
            note="same, wall time incl. 3 fsyncs per write: follows the shared disk's load, ~+-30%"),
    ]


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]))))
    else:
        standalone(run)
