"""object_store: the engine writing to object storage (ObjectParquetStore on a local moto S3
server, `python -m moto.server` on 127.0.0.1) against the local Parquet store (a temp folder on
disk), the same job: SYMBOLS symbols of 1h demo bars over YEARS years, max_bars=500 (one segment
per ~500 bars), demo latency 0, WORKERS workers.

- bars/s: bars stored / wall time of `process_batch`, each store on a fresh root;
- requests per segment: every S3 request the store made (store.requests: GETs of manifests and
  parts, PUTs of parts and manifests, deletes) / the segments written;
- a second run over the same window: the requests it makes (manifest reads only; no provider
  request, nothing written).

moto keeps objects in memory and answers over loopback, so these numbers are the protocol's cost
(requests, merges, Parquet encoding), not a network's: against real S3 each request adds its
round trip (~10-50 ms), and requests per segment is the number to multiply by it. Informational
rows: no aim.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench._common import Row, log, standalone

YEARS = 5
SYMBOLS = 4
WORKERS = 4
MAX_BARS = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("moto.server did not start")


def run_engine(store: object, years: int, symbols: int) -> tuple[float, int, int]:
    """(wall seconds, bars stored, segments written)."""
    from ktrdr_collect.engine.engine import ProcessingEngine
    from ktrdr_collect.providers.demo import DemoProvider

    provider = DemoProvider({"latency_ms": 0, "max_bars": MAX_BARS})
    engine = ProcessingEngine(provider, store, workers=WORKERS)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    results = engine.process_batch([f"OB{i}" for i in range(symbols)], "1h", start=f"{2024 - years}-01-01",
                                   end="2024-01-01")
    wall = time.perf_counter() - t0
    assert all(r.ok for r in results), [r.error for r in results]
    return wall, sum(r.candles for r in results), sum(r.requests for r in results)


def run(quick: bool) -> list[Row]:
    from ktrdr_collect.storage.object_store import ObjectParquetStore
    from ktrdr_collect.storage.parquet_store import ParquetStore

    years, symbols = (1, 2) if quick else (YEARS, SYMBOLS)
    proc, endpoint = start_moto()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        import s3fs

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem().mkdir(bucket)
        remote = ObjectParquetStore(f"s3://{bucket}/data")
        r_wall, r_bars, segments = run_engine(remote, years, symbols)
        r_requests = sum(remote.requests.values())
        log(f"object store: {r_bars} bars, {segments} segments, {r_wall:.2f}s, requests {dict(remote.requests)}")
        again = ObjectParquetStore(f"s3://{bucket}/data")
        _, _, provider_again = run_engine(again, years, symbols)
        with tempfile.TemporaryDirectory(prefix="ktrdr-bench-") as folder:
            l_wall, l_bars, _ = run_engine(ParquetStore(Path(folder)), years, symbols)
        log(f"local parquet: {l_bars} bars, {l_wall:.2f}s")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert r_bars == l_bars
    size = f"{symbols} symbols x {years}y 1h, {segments} segments, {WORKERS} workers"
    return [
        Row("object_store bars/s", f"{r_bars / r_wall:,.0f} bars/s", f"local parquet {l_bars / l_wall:,.0f} bars/s",
            (r_bars / r_wall) / (l_bars / l_wall), "info", None, note=f"moto on loopback; {size}"),
        Row("object_store requests/segment", f"{r_requests / segments:.2f}", "-", None, "info", None,
            note=", ".join(f"{k} {v}" for k, v in sorted(remote.requests.items()))),
        Row("object_store second run", f"{sum(again.requests.values())} requests",
            f"{provider_again} provider requests", None, "manifest reads only",
            provider_again == 0 and set(again.requests) <= {"get_object"}),
    ]


if __name__ == "__main__":
    standalone(run)
