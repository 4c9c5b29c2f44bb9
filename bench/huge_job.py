"""huge_job: one job with 100,000 symbols (20,000 with --quick): pause latency and state writing.

Real subprocesses against a fresh KTRDR_COLLECT_HOME: the symbols (`S000000`, ...) go in a file,
`python -m ktrdr_collect start -f FILE -t 1d --days 30 -o latency_ms=100 -o max_bars=5 -w 4 -d`
(~5 requests a symbol, ~40 requests a second: the job changes every ~25 ms, so its runner writes
state as often as it lets itself, while the engine itself needs little CPU). A small job (1,000
symbols, same options) is measured the same way, one after the other, as the baseline.

Per job, once it has made 20 requests:
- steady state over a window (8 s, 4 s with --quick), the job running: a 2 ms loop stats
  state.json and counts the versions it sees (a new inode, size or mtime) and their bytes; the
  runner's CPU (utime + stime, /proc/PID/stat) and bytes written by it (wchar, /proc/PID/io: every
  file, data included) over the window.
- pause -> acknowledged: `ktrdr_collect.jobs.actions.pause(job)` timed in this process, as in
  control_latency (the job resumed, and left running 1 s, between trials); p50 / p99 (nearest
  rank) over 10 trials (5 with --quick). It includes reading the whole status once, to return it.
  The acknowledgement alone: `control.send(folder, "pause")`, then a 1 ms loop reading the head of
  state.json (`statefile.read_head`; the whole file where that does not exist) until the command's
  id is acknowledged there, same number of trials. Then `collect pause JOB` as a subprocess, 3 times
  (the user's view: interpreter start-up, reading the status, printing it), each resumed likewise.
- what writing state.json cost the runner over its life: the line it logs when it ends
  (`state.json written N times, X MB, Y s of CPU in T s`), present since the runner counts it.
Requirement: pause acknowledged within 1 s (contract); aims: p99 <= 1 s at 100,000 symbols, and
state writing at most 10 % of a core. The runner's whole CPU is shown too (information): most of
it is the engine's, not the state's.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass

from bench._common import Row, fmt_s, fresh_home, log, percentile, standalone
from bench.control_latency import cli, stop_all, wait_running

OPTIONS = ["-t", "1d", "--days", "30", "-o", "latency_ms=100", "-o", "max_bars=5", "-w", "4"]
CPU_AIM = 0.10
"""State writing: at most this share of one core."""
WRITES_RE = re.compile(r"state\.json written (\d+) times, ([\d.]+) MB, ([\d.]+) s of CPU in ([\d.]+) s")
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Measure:
    symbols: int
    state_bytes: int
    versions: int
    state_bytes_written: int
    window_s: float
    cpu_s: float
    wchar: int
    rss_mb: float
    pauses: list[float]
    acks: list[float]
    cli_pauses: list[float]
    logged: tuple[int, float, float, float] | None
    """(writes, MB, CPU s, wall s) from the runner's log; None from a runner that does not log it."""

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / self.window_s


def runner_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def runner_io(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def runner_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def start_job(n: int, workdir: str) -> str:
    path = os.path.join(workdir, f"symbols-{n}.txt")
    with open(path, "w") as f:
        f.write("".join(f"S{i:06d}\n" for i in range(n)))
    proc = subprocess.run(cli("start", "-f", path, *OPTIONS, "-d"), capture_output=True, text=True,
                          env=os.environ.copy(), timeout=120)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"collect start failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip()


def steady(folder: str, pid: int, window: float) -> tuple[int, int, int, float, int]:
    """(versions of state.json seen, their bytes, last size, runner CPU s, runner wchar) over `window`."""
    state = os.path.join(folder, "state.json")
    seen = None
    versions = written = size = 0
    cpu0, io0 = runner_cpu(pid), runner_io(pid)
    t_end = time.monotonic() + window
    while time.monotonic() < t_end:
        try:
            s = os.stat(state)
        except FileNotFoundError:
            continue
        key = (s.st_ino, s.st_mtime_ns, s.st_size)
        if key != seen:
            if seen is not None:
                versions += 1
                written += s.st_size
            seen, size = key, s.st_size
        time.sleep(0.002)
    return versions, written, size, runner_cpu(pid) - cpu0, runner_io(pid) - io0


def measure(n: int, workdir: str, window: float, trials: int) -> Measure:
    from ktrdr_collect import paths
    from ktrdr_collect.jobs import actions
    from ktrdr_collect.jobs.lock import holder_pid

    t0 = time.perf_counter()
    job = start_job(n, workdir)
    wait_running(job, min_requests=20, timeout=120)
    log(f"huge_job: {n} symbols running after {time.perf_counter() - t0:.1f}s")
    folder = paths.job_dir(job)
    pid = holder_pid(folder)
    assert pid, "no runner pid"
    versions, written, size, cpu, wchar = steady(str(folder), pid, window)
    rss = runner_rss_mb(pid)
    pauses = []
    for _ in range(trials):
        t = time.perf_counter()
        st = actions.pause(job)
        pauses.append(time.perf_counter() - t)
        assert st["status"] == "paused", st["status"]
        assert actions.resume(job)["status"] == "running"
        time.sleep(1.0)
    acks = []
    for _ in range(trials):
        acks.append(ack_seen(job, folder))
        assert actions.resume(job)["status"] == "running"
        time.sleep(1.0)
    cli_pauses = []
    for _ in range(3):
        t = time.perf_counter()
        proc = subprocess.run(cli("pause", job), capture_output=True, text=True, env=os.environ.copy())
        cli_pauses.append(time.perf_counter() - t)
        if proc.returncode != 0:
            raise RuntimeError(f"collect pause exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
        assert actions.resume(job)["status"] == "running"
        time.sleep(1.0)
    stop_all()
    found = WRITES_RE.findall((folder / "log").read_text())
    logged = tuple(float(x) for x in found[-1]) if found else None
    return Measure(n, size, versions, written, window, cpu, wchar, rss, pauses, acks, cli_pauses,
                   logged)  # type: ignore[arg-type]


def ack_seen(job: str, folder: os.PathLike[str]) -> float:
    """Seconds from sending `pause` to its acknowledgement in state.json."""
    from pathlib import Path

    from ktrdr_collect.jobs import control, statefile

    read = getattr(statefile, "read_head", statefile.read_state)  # before read_head: the whole file
    t = time.perf_counter()
    sent = control.send(Path(folder), "pause")
    while control.find_ack(read(Path(folder)), sent) is None:
        if time.perf_counter() - t > 30:
            raise RuntimeError(f"job {job}: pause not acknowledged in 30 s")
        time.sleep(0.001)
    return time.perf_counter() - t


def writing(m: Measure) -> str:
    if m.logged is None:
        return "not logged"
    n, mb, cpu, wall = m.logged
    return f"{100 * cpu / wall:.1f} % of a core, {mb / wall:.2f} MB/s ({n:.0f} writes in {wall:.0f} s)"


def rows_for(big: Measure, small: Measure) -> list[Row]:
    mb = 1024 * 1024
    p50, p99 = percentile(big.pauses, 50), percentile(big.pauses, 99)
    s99 = percentile(small.pauses, 99)
    label = f"huge_job {big.symbols} sym"
    share = big.logged[2] / big.logged[3] if big.logged else None
    return [
        Row(f"{label}: pause -> acknowledged (n={len(big.pauses)})", f"p50 {fmt_s(p50)} / p99 {fmt_s(p99)}",
            f"{small.symbols} sym: p99 {fmt_s(s99)}", p99 / 1.0, "p99 <= 1 s", p99 <= 1.0,
            note="worst 3: " + ", ".join(fmt_s(x) for x in sorted(big.pauses)[-3:])),
        Row(f"{label}: pause -> ack in state.json (n={len(big.acks)})",
            f"p50 {fmt_s(percentile(big.acks, 50))} / p99 {fmt_s(percentile(big.acks, 99))}",
            f"{small.symbols} sym: p99 {fmt_s(percentile(small.acks, 99))}", percentile(big.acks, 99) / 1.0,
            "(info) <= 1 s", None),
        Row(f"{label}: `collect pause` CLI (n={len(big.cli_pauses)})",
            f"p50 {fmt_s(percentile(big.cli_pauses, 50))} / max {fmt_s(max(big.cli_pauses))}",
            f"{small.symbols} sym: max {fmt_s(max(small.cli_pauses))}", max(big.cli_pauses) / 1.0,
            "(info) <= 1 s", None),
        Row(f"{label}: state.json size", f"{big.state_bytes / mb:.1f} MB", f"{small.state_bytes / 1024:.0f} KB",
            big.state_bytes / max(1, small.state_bytes), "(info)", None),
        Row(f"{label}: state.json versions/s, MB/s",
            f"{big.versions / big.window_s:.1f}/s, {big.state_bytes_written / big.window_s / mb:.1f} MB/s",
            f"{small.versions / small.window_s:.1f}/s, {small.state_bytes_written / small.window_s / mb:.2f} MB/s",
            None, "(info)", None),
        Row(f"{label}: state writing, whole run (runner log)", writing(big), f"{small.symbols} sym: {writing(small)}",
            None if share is None else share / CPU_AIM, f"<= {100 * CPU_AIM:.0f} % of a core",
            None if share is None else share <= CPU_AIM),
        Row(f"{label}: runner CPU ({big.window_s:.0f} s window)", f"{100 * big.cpu_share:.0f} % of a core",
            f"{small.symbols} sym: {100 * small.cpu_share:.0f} %", big.cpu_share / max(0.01, small.cpu_share),
            "(info) engine + state", None,
            note=f"runner RSS {big.rss_mb:.0f} MB (small job {small.rss_mb:.0f} MB)"),
        Row(f"{label}: runner bytes written/s (all files)", f"{big.wchar / big.window_s / mb:.2f} MB/s",
            f"{small.wchar / small.window_s / mb:.2f} MB/s",
            (big.wchar / big.window_s) / max(1.0, small.wchar / small.window_s),
            "(info)", None),
    ]


def run(quick: bool = False) -> list[Row]:
    n = 20_000 if quick else 100_000
    window = 4.0 if quick else 8.0
    trials = 5 if quick else 10
    with fresh_home(), tempfile.TemporaryDirectory(prefix="ktrdr-huge-") as workdir:
        try:
            small = measure(1_000, workdir, window, trials)
            big = measure(n, workdir, window, trials)
        finally:
            stop_all()
    return rows_for(big, small)


if __name__ == "__main__":
    standalone(run)
