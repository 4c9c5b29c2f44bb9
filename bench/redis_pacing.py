"""redis_pacing: three "hosts" (processes) pacing through Redis against a fake exchange that limits
per client key (LIMIT requests in any 1 s per key, refusing the rest with 429 and counting them).

A real redis-server on 127.0.0.1 (fresh, no persistence) and a threaded HTTP fake exchange in this
process. Each host is a subprocess that loops for the run: `wait_turn` on the pacer that
`pacer_for` gives it (config-equivalent `Sharing`), marks the send time, GETs `/klines` with its
client key, `correct`s the stamp. All hosts start together; the server counts the requests it
accepted in a window that opens 2 s after the start (past the first burst a sliding window
allows) and lasts DURATION s.

- one host: one process, its own key (the baseline);
- per-host keys (`pacing_per_host = fake`): three processes, each with its own client key at the
  exchange and its own budget in Redis. Aim: throughput >= 2.7x one host;
- one shared key: three processes, one client key (one account) and one budget. Aims: throughput
  >= 0.95 of the account limit, 0 throttled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench._common import Row, log, standalone

LIMIT = 20
SPAN = 1.0
WARMUP = 2.0
REPO = Path(__file__).resolve().parent.parent

HOST = textwrap.dedent("""
    import json, sys, time, urllib.request
    from ktrdr_collect.providers.pacing import Sharing, pacer_for
    url, exchange, key, host, per_host, until = sys.argv[1:7]
    sharing = Sharing(url, frozenset({"fake"}) if per_host == "1" else frozenset(), host=host)
    pacer = pacer_for("fake", float(sys.argv[7]), sharing=sharing)
    opener = urllib.request.build_opener()
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    time.sleep(max(0.0, start - time.time()))
    sent = refused = 0
    while time.time() < start + float(until):
        slot = pacer.wait_turn(lambda s: time.sleep(s) is None)
        sent_at = time.time()
        request = urllib.request.Request(exchange + "/klines", headers={"X-Client-Key": key})
        try:
            opener.open(request, timeout=10).read()
        except urllib.error.HTTPError as e:
            refused += e.code == 429
        pacer.correct(slot, sent_at)
        sent += 1
    print(json.dumps({"sent": sent, "refused": refused}), flush=True)
""")


class Exchange:
    """LIMIT requests in any SPAN seconds per client key; beyond that 429 (counted)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recent: dict[str, deque[float]] = defaultdict(deque)
        self.accepted: list[tuple[str, float]] = []
        self.refused: dict[str, int] = defaultdict(int)
        exchange = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                now = time.monotonic()
                ok = exchange.admit(self.headers.get("X-Client-Key", ""), now)
                body = b"[]" if ok else b'{"code":-1003,"msg":"Too many requests"}'
                self.send_response(200 if ok else 429)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="bench-exchange", daemon=True)
        self.thread.start()

    def admit(self, key: str, now: float) -> bool:
        with self.lock:
            window = self.recent[key]
            while window and window[0] <= now - SPAN:
                window.popleft()
            if len(window) >= LIMIT:
                self.refused[key] += 1
                return False
            window.append(now)
            self.accepted.append((key, now))
            return True

    def rate(self, start: float, length: float) -> float:
        """Accepted requests per second (all keys) in [start, start + length) (monotonic clock)."""
        with self.lock:
            return sum(1 for _, t in self.accepted if start <= t < start + length) / length

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def scenario(url: str, hosts: int, per_host: bool, duration: float) -> tuple[float, int, list[dict[str, int]]]:
    """(accepted requests/s in the measured window, refused, per-host reports)."""
    import redis

    redis.Redis.from_url(url).flushdb()
    exchange = Exchange()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = []
    try:
        for i in range(hosts):
            key = f"host-{i}" if per_host else "account"
            procs.append(subprocess.Popen(
                [sys.executable, "-c", HOST, url, exchange.url, key, f"h{i}", "1" if per_host else "0",
                 str(WARMUP + duration + 0.5), str(LIMIT)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env))
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        start_wall = time.time() + 0.5
        start_mono = time.monotonic() + 0.5
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"{start_wall}\n")
            p.stdin.flush()
        reports = [json.loads(p.communicate(timeout=WARMUP + duration + 60)[0].strip().splitlines()[-1])
                   for p in procs]
        rate = exchange.rate(start_mono + WARMUP, duration)
        refused = sum(exchange.refused.values())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        exchange.close()
    return rate, refused, reports


def run(quick: bool = False) -> list[Row]:
    from tests.services import start_redis

    duration = 5.0 if quick else 15.0
    with tempfile.TemporaryDirectory(prefix="ktrdr-bench-redis-") as folder:
        server = start_redis(Path(folder))
        try:
            one, one_refused, _ = scenario(server.url, 1, True, duration)
            log(f"redis_pacing: one host {one:.2f}/s, refused {one_refused}")
            three, three_refused, _ = scenario(server.url, 3, True, duration)
            log(f"redis_pacing: three hosts, per-host keys {three:.2f}/s, refused {three_refused}")
            shared, shared_refused, reports = scenario(server.url, 3, False, duration)
            log(f"redis_pacing: three hosts, one key {shared:.2f}/s, refused {shared_refused}, hosts {reports}")
        finally:
            server.stop()
    share = ", ".join(str(r["sent"]) for r in reports)
    return [
        Row(f"redis_pacing 3 hosts, per-host keys ({duration:.0f} s)", f"{three:.2f} req/s",
            f"1 host {one:.2f} req/s", three / one, ">= 2.7x", three / one >= 2.7,
            note=f"limit {LIMIT}/s per client key; refused: one host {one_refused}, three hosts {three_refused}"),
        Row(f"redis_pacing 3 hosts, one shared key ({duration:.0f} s)", f"{shared:.2f} req/s",
            f"limit {LIMIT}/s", shared / LIMIT, ">= 0.95", shared / LIMIT >= 0.95,
            note=f"requests sent per host over the run: {share}"),
        Row("redis_pacing 3 hosts, one shared key: throttled", f"{shared_refused} throttled",
            f"of {sum(r['sent'] for r in reports)} requests", None, "== 0", shared_refused == 0),
    ]


if __name__ == "__main__":
    standalone(run)
