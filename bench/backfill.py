"""backfill: extending 1m CSV history backwards (issue 12 item 5) costs about what filling the same
bars forwards does.

Demo provider (latency_ms=0, max_bars=1000), 1m bars, 3 symbols (--quick: 1), one worker per
symbol, CSV on a fresh temp dir on disk. Each job runs in a fresh child process through the Python
API (ProcessingEngine: a job's engine without the runner):

- run A: a job for the most recent year (2023), then a second job extending the same series back
  to 10 years (2014-2024; --quick: 3 years). Only the second job — the backfill — is timed.
- run B: a job filling 2014..2022 (the same bars the backfill added, same count) forwards into an
  empty data dir.
- run C: a straight 10-year forward fill into another empty dir; A's files must equal C's byte for
  byte.
- not --quick, for information: one symbol extended 1 -> 20 years and its forward twin (how the
  cost of rewriting the whole file once per batch grows with the file).

Compared: wall and process CPU of the backfill job vs the forward job (aim: wall <= 1.3x). Also
measured in the backfill job, by wrapping the store's `write` and the provider's `fetch`:
- rewrites per series: writes after which the data file is a new inode (an atomic replace; an
  append keeps the inode), and the bytes the job wrote (/proc/self/io wchar) against the file's
  final size;
- whether any lock is held while a provider request is out: at each fetch, the series' store lock
  and its claims-folder lock are probed with a non-blocking flock from a fresh descriptor.

`python -m bench.backfill --profile` then runs the backfill once more under cProfile (each symbol's
worker thread profiled, merged) and prints where its time goes (stderr).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from bench._common import Row, fmt_s, format_table, fresh_home, log

ROOT = Path(__file__).resolve().parent.parent
END_YEAR = 2024
AIM = 1.3
LONG_YEARS = 20
"""Not --quick: one symbol is also extended 1 -> 20 years (info: how the rewrites' cost grows)."""
OPTIONS = {"latency_ms": 0, "max_bars": 1000}


def wchar() -> int:
    """Bytes this process has written through write() calls so far (Linux /proc/self/io), or -1."""
    try:
        with open("/proc/self/io", "rb") as f:
            for line in f:
                if line.startswith(b"wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def held_elsewhere(path: Path) -> bool:
    """Whether someone holds the flock on `path` (a fresh open file description conflicts with
    every other one, in this process too)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def child(data_dir: str, symbols: list[str], start: str, end: str, profile: bool) -> dict:
    """One job through the Python API, instrumented; its numbers as a dict."""
    from ktrdr_collect.api import ProcessingEngine, create_provider, open_store
    from ktrdr_collect.storage.claims import LOCK_NAME, claims_folder

    store = open_store("csv", Path(data_dir))
    provider = create_provider("demo", OPTIONS)
    engine = ProcessingEngine(provider, store, workers=len(symbols))
    writes = {s: 0 for s in symbols}
    rewrites = {s: 0 for s in symbols}
    locked_requests = {"store": 0, "claims": 0}
    requests = [0]

    def inode(symbol: str) -> int | None:
        try:
            return os.stat(store.path("demo", "1m", symbol)).st_ino
        except FileNotFoundError:
            return None

    write = store.write

    def watched_write(prov, tf, symbol, bars, covered):  # noqa: ANN001, ANN202
        before = inode(symbol)
        rows = write(prov, tf, symbol, bars, covered)
        writes[symbol] += 1
        if before is not None and inode(symbol) != before:
            rewrites[symbol] += 1
        return rows

    store.write = watched_write  # type: ignore[method-assign]
    fetch = provider.fetch

    def watched_fetch(symbol, timeframe, lo, hi, attempt):  # noqa: ANN001, ANN202
        lock = store.lock_path("demo", timeframe, symbol)
        requests[0] += 1
        locked_requests["store"] += held_elsewhere(lock)
        locked_requests["claims"] += held_elsewhere(claims_folder(lock) / LOCK_NAME)
        return fetch(symbol, timeframe, lo, hi, attempt)

    provider.fetch = watched_fetch  # type: ignore[method-assign]
    probe = store.lock_path("demo", "1m", symbols[0])
    with store.lock("demo", "1m", symbols[0]):  # the probe sees a held lock (else it measures nothing)
        assert held_elsewhere(probe), "the lock probe cannot see a held lock"
    assert not held_elsewhere(probe)
    profiles = profile_symbols() if profile else None
    w0, t0, c0 = wchar(), time.perf_counter(), time.process_time()
    results = engine.process_batch(symbols, "1m", start=start, end=end)
    wall, cpu, written = time.perf_counter() - t0, time.process_time() - c0, wchar() - w0
    if profiles:
        import pstats

        stats = pstats.Stats(*profiles, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(30)
        stats.sort_stats("tottime").print_stats(15)
    bad = [r for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"job failed: {bad}")
    sizes = {s: store.size("demo", "1m", s) for s in symbols}
    return {"wall": wall, "cpu": cpu, "candles": sum(r.candles for r in results), "maxrss_mb": peak_rss_mb(),
            "requests": requests[0], "writes": writes, "rewrites": rewrites, "locked": locked_requests,
            "wchar": written, "sizes": sizes}


def peak_rss_mb() -> float:
    """This process's peak RSS (Linux VmHWM: of this program alone; ru_maxrss would carry over the
    parent's peak across fork and exec), or NaN."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def profile_symbols() -> list:
    """Each symbol's pipeline (a worker thread: cProfile sees one thread) run under its own
    profiler; the profilers, to be merged once the job is done."""
    import cProfile

    from ktrdr_collect.engine import pipeline

    profiles: list = []
    run = pipeline.SymbolPipeline.run

    def profiled(self):  # noqa: ANN001, ANN202
        profiler = cProfile.Profile()
        profiles.append(profiler)
        return profiler.runcall(run, self)

    pipeline.SymbolPipeline.run = profiled  # type: ignore[method-assign]
    return profiles


def job(data_dir: Path, symbols: list[str], start: str, end: str, profile: bool = False) -> dict:
    cmd = [sys.executable, "-m", "bench.backfill", "--child",
           json.dumps([str(data_dir), symbols, start, end, profile])]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ.copy(), timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"backfill child failed:\n{proc.stderr[-2000:]}")
    if profile:
        print(proc.stderr, file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.csv"))}


def run(quick: bool = False, profile: bool = False) -> list[Row]:
    years = 3 if quick else 10
    symbols = ["BF1"] if quick else ["BF1", "BF2", "BF3"]
    recent, first, end = f"{END_YEAR - 1}-01-01", f"{END_YEAR - years}-01-01", f"{END_YEAR}-01-01"
    with fresh_home("ktrdr-bench-backfill-") as home:
        a, b, c = home / "a", home / "b", home / "c"
        seed = job(a, symbols, recent, end)
        log(f"backfill: seeded 1 year, {seed['candles']} bars in {seed['wall']:.2f}s")
        back = job(a, symbols, first, end)
        log(f"backfill: backfill {back['candles']} bars in {back['wall']:.2f}s (cpu {back['cpu']:.2f}s), "
            f"rewrites {back['rewrites']}, writes {back['writes']}, lock held at requests {back['locked']}")
        fwd = job(b, symbols, first, recent)
        log(f"backfill: forward {fwd['candles']} bars in {fwd['wall']:.2f}s (cpu {fwd['cpu']:.2f}s), "
            f"rewrites {fwd['rewrites']}, writes {fwd['writes']}")
        straight = job(c, symbols, first, end)
        log(f"backfill: straight {years}y {straight['candles']} bars in {straight['wall']:.2f}s")
        folder = ("demo", "1m")
        got, want = files_of(a.joinpath(*folder)), files_of(c.joinpath(*folder))
        identical = sorted(got) == sorted(f"{s}.csv" for s in symbols) and got == want
        del got, want
        if profile:  # a separate backfill, so that the profiler's overhead is in no timed job
            job(home / "d", symbols, recent, end)
            job(home / "d", symbols, first, end, profile=True)
        longer = None if quick else trend(home, LONG_YEARS)
    same_bars = back["candles"] == fwd["candles"]
    ratio = back["wall"] / fwd["wall"]
    cpu_ratio = back["cpu"] / fwd["cpu"]
    final = sum(back["sizes"].values())
    rewrites = max(back["rewrites"].values())
    label = f"backfill 1m 1->{years}y ({len(symbols)} sym, {back['candles']} bars)"
    rows = [
        Row(f"{label} wall", fmt_s(back["wall"]), f"forward same bars {fmt_s(fwd['wall'])}", ratio,
            f"<= {AIM}x", ratio <= AIM and same_bars and identical,
            note=f"backfill {back['candles']} bars / forward {fwd['candles']} bars "
                 f"({'same' if same_bars else 'DIFFERENT'} count); files after the backfill vs a straight "
                 f"{years}-year forward fill: {'byte-identical' if identical else 'DIFFERENT'}"),
        Row(f"{label} CPU", fmt_s(back["cpu"]), f"forward {fmt_s(fwd['cpu'])}", cpu_ratio, "(info)", None),
        Row("backfill rewrites per series per job", str(rewrites), f"{back['requests'] // len(symbols)} requests",
            None, "(info) 1 per job, never 1 per segment", None,
            note=f"data file replaced (new inode) {back['rewrites']} times in {back['writes']} writes; "
                 f"bytes written {back['wchar'] / 1e6:.0f} MB for {final / 1e6:.0f} MB of final files "
                 f"({back['wchar'] / final:.1f}x); forward job: {fwd['rewrites']} rewrites, "
                 f"{fwd['wchar'] / 1e6:.0f} MB written"),
        Row("backfill requests with a lock held", str(sum(back["locked"].values())), f"{back['requests']} requests",
            None, "0", sum(back["locked"].values()) == 0,
            note=f"store lock held at {back['locked']['store']}, claims-folder lock at "
                 f"{back['locked']['claims']} of the backfill's provider requests"),
    ]
    rows.append(Row("backfill peak RSS (job's process)", f"{back['maxrss_mb']:.0f} MB",
                    f"forward {fwd['maxrss_mb']:.0f} MB", back["maxrss_mb"] / fwd["maxrss_mb"], "(info)", None,
                    note=f"VmHWM of each job's child process (imports included); largest final file "
                         f"{max(back['sizes'].values()) / 1e6:.0f} MB"))
    if longer is not None:
        lback, lfwd = longer
        rows.append(Row(f"backfill 1m 1->{LONG_YEARS}y (1 sym, {lback['candles']} bars) wall", fmt_s(lback["wall"]),
                        f"forward same bars {fmt_s(lfwd['wall'])}", lback["wall"] / lfwd["wall"], "(info)", None,
                        note=f"the trend: CPU {fmt_s(lback['cpu'])} vs {fmt_s(lfwd['cpu'])} forward "
                             f"({lback['cpu'] / lfwd['cpu']:.2f}x), {lback['rewrites']['BF1']} rewrites, "
                             f"{lback['wchar'] / 1e6:.0f} MB written for a "
                             f"{lback['sizes']['BF1'] / 1e6:.0f} MB file (forward {lfwd['wchar'] / 1e6:.0f} MB), "
                             f"peak RSS {lback['maxrss_mb']:.0f} MB (forward {lfwd['maxrss_mb']:.0f} MB)"))
    return rows


def trend(home: Path, years: int) -> tuple[dict, dict]:
    """One symbol, 1 -> `years` years: the backfill and its forward twin (no identity check)."""
    recent, first, end = f"{END_YEAR - 1}-01-01", f"{END_YEAR - years}-01-01", f"{END_YEAR}-01-01"
    job(home / "e", ["BF1"], recent, end)
    back = job(home / "e", ["BF1"], first, end)
    fwd = job(home / "f", ["BF1"], first, recent)
    log(f"backfill: 1->{years}y backfill {back['wall']:.2f}s (cpu {back['cpu']:.2f}s), forward {fwd['wall']:.2f}s "
        f"(cpu {fwd['cpu']:.2f}s), rewrites {back['rewrites']}")
    return back, fwd


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--child":
        data_dir, symbols, start, end, profile = json.loads(sys.argv[2])
        print(json.dumps(child(data_dir, symbols, start, end, profile)))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.backfill")
    parser.add_argument("--quick", action="store_true", help="1 symbol, 1 -> 3 years")
    parser.add_argument("--profile", action="store_true", help="cProfile the backfill job (to stderr)")
    args = parser.parse_args()
    rows = run(args.quick, args.profile)
    print(format_table(rows))
    sys.exit(0 if all(r.ok is not False for r in rows) else 1)


if __name__ == "__main__":
    main()
