"""A write that runs out of room (RLIMIT_FSIZE stands in for a full disk) fails the symbol,
keeps every stored file valid, and a later run completes the data exactly."""

import json
import os
import resource
import signal
import subprocess
from pathlib import Path

from tests.conftest import COLLECT

ARGS = ["start", "AAA", "BBB", "-t", "1h", "--start", "2021-01-01", "--end", "2023-01-01",
        "-o", "latency_ms=0", "-o", "max_bars=500", "-w", "1", "--json"]


def run(home: Path, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "KTRDR_COLLECT_HOME": str(home)}
    return subprocess.run(COLLECT + ARGS, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, preexec_fn=cap if limit else None)


def test_running_out_of_space_loses_nothing(home: Path, tmp_path: Path) -> None:
    r = run(home, limit=60_000)  # room for a few segments of each file, not all
    assert r.returncode == 4, r.stderr
    final = json.loads(r.stdout.splitlines()[-1])
    assert final["status"] == "failed"
    assert all("cannot store data" in s["error"] for s in final["symbols"])
    for symbol in ("AAA", "BBB"):
        lines = (home / "data/demo/1h" / f"{symbol}.csv").read_text().splitlines()
        assert lines[0] == "timestamp,open,high,low,close,volume"
        stamps = [line.split(",")[0] for line in lines[1:]]
        assert stamps == sorted(set(stamps)) and all(len(line.split(",")) == 6 for line in lines)
    r = run(home)
    assert r.returncode == 0, r.stderr
    reference = tmp_path / "reference"
    assert run(reference).returncode == 0
    for symbol in ("AAA", "BBB"):
        got = (home / "data/demo/1h" / f"{symbol}.csv").read_bytes()
        assert got == (reference / "data/demo/1h" / f"{symbol}.csv").read_bytes()
