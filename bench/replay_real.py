"""Replay REAL recorded Yahoo and Binance answers through `collect start` and check every stored bar.

    python -m bench.replay_real [--fixtures DIR] [--replay-server PATH]

Needs a folder of real recordings and a replay server for them (the workplace keeps both in
`../shared/`: `fixtures/real-api/` and `tools/replay_server.py`, the defaults). Nothing in the
project's tests or install needs them. For every recording it runs `collect start` against the
replay server for the recording's window and compares the stored file with what the recording
says the exchange published: the same session dates (the local date in
`meta.exchangeTimezoneName`, at 00:00Z), the same OHLCV, rows with null prices left out, and no
forming bar (checked in-process with the clock set to the recording's time, since a CLI run
happens long after it). Exit 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.providers.binance import BinanceProvider
from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.timeframes import DAY, format_ts

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
Bar = tuple[int, float, float, float, float, float]


def yahoo_cases(fixtures: Path) -> list[dict[str, Any]]:
    cases = []
    for path in sorted((fixtures / "yahoo").glob("*.json")):
        doc = json.loads(path.read_text())
        q = {k: v[0] for k, v in parse_qs(urlsplit(doc["request"]["url"]).query).items()}
        body = doc["response"].get("bodyJson") or doc["response"].get("body")
        if q.get("interval") != "1d" or not isinstance(body, dict):
            continue  # the one 1m recording is a Saturday, older than Yahoo's 30 days of 1m bars
        symbol = urlsplit(doc["request"]["url"]).path.rsplit("/", 1)[1]
        cases.append({"name": path.name, "symbol": symbol, "start": int(q["period1"]), "end": int(q["period2"]),
                      "result": body["chart"]["result"][0]})
    return cases


def yahoo_expected(results: list[dict[str, Any]], start: int, end: int) -> list[Bar]:
    """Independently of the provider: each non-null row at 00:00Z of its exchange-local date."""
    bars: dict[int, Bar] = {}
    for result in results:
        tz = ZoneInfo(result["meta"]["exchangeTimezoneName"])
        q = result["indicators"]["quote"][0]
        for i, ts in enumerate(result.get("timestamp") or []):
            o, h, low, c, v = (q[k][i] for k in ("open", "high", "low", "close", "volume"))
            if None in (o, h, low, c):
                continue
            d = datetime.fromtimestamp(ts, tz).date()
            stamp = (d.toordinal() - datetime(1970, 1, 1).toordinal()) * DAY
            if start <= stamp < end:
                bars.setdefault(stamp, (stamp, float(o), float(h), float(low), float(c), float(v or 0)))
    return [bars[k] for k in sorted(bars)]


def day_text(ts: int) -> str:
    return format_ts(ts)[:10]


def collect(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KTRDR_COLLECT_HOME": str(home), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "ktrdr_collect", "start", *args, "-q"], env=env,
                          capture_output=True, text=True, timeout=300)


def check_yahoo(fixtures: Path, url: str, home: Path) -> list[tuple[str, int, int, bool]]:
    rows = []
    cases = yahoo_cases(fixtures)
    by_symbol: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        by_symbol.setdefault(case["symbol"], []).append(case["result"])
    store = CsvStore(home / "data")
    for case in cases:
        start = case["start"] - case["start"] % DAY
        end = case["end"] - case["end"] % DAY
        collect(home, case["symbol"], "-p", "yahoo", "-t", "1d", "--start", day_text(start), "--end",
                day_text(end), "-o", f"base_url={url}", "-o", "rate_limit=0")
        want = yahoo_expected(by_symbol[case["symbol"]], start, end)
        got = store.read("yahoo", "1d", case["symbol"], start, end)
        rows.append((case["name"], len(want), len(got), got == want))
    return rows


def binance_rows(fixtures: Path, name: str) -> list[Bar]:
    body = json.loads((fixtures / "binance" / name).read_text())["body"]
    return [(r[0] // 1000, *(float(x) for x in r[1:6])) for r in body]  # type: ignore[misc]


def check_binance(fixtures: Path, url: str, home: Path) -> list[tuple[str, int, int, bool]]:
    store = CsvStore(home / "data")
    out = []
    hb = binance_rows(fixtures, "hummingbot__BTCUSDT_1h_2023-01-06.json")
    collect(home, "BTC/USDT", "-p", "binance", "-t", "1h", "--start", format_ts(hb[0][0]), "--end",
            format_ts(hb[-1][0] + 3600), "-o", f"base_url={url}", "-o", "rate_limit=0")
    got = store.read("binance", "1h", "BTC/USDT")
    out.append(("hummingbot__BTCUSDT_1h_2023-01-06.json", len(hb), len(got), got == hb))
    for name, symbol, tf, end in (("python-binance__BNBBTC_1m_first.json", "BNB/BTC", "1m", "2017-07-14T04:01:00"),
                                  ("binance-docs__ETHBTC_example.json", "ETH/BTC", "1w", "2017-07-10")):
        want = binance_rows(fixtures, name)
        collect(home, symbol, "-p", "binance", "-t", tf, "--start", "earliest", "--end", end,
                "-o", f"base_url={url}", "-o", "rate_limit=0")
        got = store.read("binance", tf, symbol)
        out.append((name, len(want), len(got), got == want))
    out.append(check_forming(fixtures, url, home))
    return out


def check_forming(fixtures: Path, url: str, home: Path) -> tuple[str, int, int, bool]:
    """The testnet 1d recording's last row was still forming when recorded: with the clock at that
    moment, it must not be stored (the CLI cannot be run in the past, so this one runs in-process)."""
    name = "python-binance__testnet_BTCUSDT_1d_2026-06.json"
    rows = binance_rows(fixtures, name)
    recorded_at = rows[-1][0] + 12 * 3600  # during the last row's day
    want = rows[:-1]
    provider = BinanceProvider({"base_url": url, "rate_limit": 0}, clock=lambda: recorded_at)
    store = CsvStore(home / "forming")
    ProcessingEngine(provider, store, workers=1, now=lambda: recorded_at).process_batch(
        ["BTC/USDT"], "1d", rows[0][0], rows[-1][0] + DAY)
    got = store.read("binance", "1d", "BTC/USDT")
    return name + " (forming bar)", len(want), len(got), got == want


def start_replay(server: Path, fixtures: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, str(server), "--fixtures", str(fixtures)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "READY":
        proc.kill()
        raise SystemExit(f"replay server did not start: {line}")
    return proc, f"http://127.0.0.1:{line[1]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=SHARED / "fixtures" / "real-api")
    parser.add_argument("--replay-server", type=Path, default=SHARED / "tools" / "replay_server.py")
    args = parser.parse_args()
    if not args.fixtures.is_dir() or not args.replay_server.is_file():
        print(f"no recordings at {args.fixtures} (or no replay server): nothing to replay", file=sys.stderr)
        return 2
    proc, url = start_replay(args.replay_server, args.fixtures)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = check_yahoo(args.fixtures, url, Path(tmp) / "y") + check_binance(args.fixtures, url, Path(tmp) / "b")
    finally:
        proc.terminate()
        proc.wait(10)
    bad = [r for r in rows if not r[3]]
    for name, want, got, ok in rows:
        print(f"{'ok  ' if ok else 'DIFF'} {name}: {want} bars published, {got} stored")
    print(f"{len(rows) - len(bad)} passed, {len(bad)} failed  ({datetime.now(UTC):%Y-%m-%d})")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
