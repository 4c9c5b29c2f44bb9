"""A fast local fake Binance for `bench.peer`: `python -m bench._peer_exchange PORT_FILE LATENCY_MS HORIZON PAIRS`.

asyncio, stdlib only, HTTP/1.1 keep-alive. Answers `GET /api/v3/klines` in the real format (open
times from startTime up to endTime or HORIZON, at most `limit` rows, prices as 8-decimal strings,
close time = next open - 1 ms) after LATENCY_MS, `GET /api/v3/exchangeInfo` with the PAIRS (comma
list of `BASE/QUOTE`) for ccxt's load_markets, and `GET /__stats` with the requests and connections
counted so far. Rows are built from a precomputed table so the fake's own CPU stays small. Writes
its port to PORT_FILE once listening; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import zlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

STEPS = {"1m": 60, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "4h": 14400, "1d": 86400}
TABLE = 997


def tails() -> list[str]:
    out = []
    for i in range(TABLE):
        h = zlib.crc32(str(i).encode())
        base = 100 + i % 50
        o, c = base + (h % 100) / 100, base + ((h >> 8) % 100) / 100
        hi, lo, v = max(o, c) + 1.25, min(o, c) - 0.75, float((h >> 16) % 5000)
        out.append(f'"{o:.8f}","{hi:.8f}","{lo:.8f}","{c:.8f}","{v:.8f}"')
    return out


class Exchange:
    def __init__(self, latency: float, horizon: int, pairs: list[str]) -> None:
        self.latency = latency
        self.horizon = horizon
        self.pairs = {p.replace("/", ""): p for p in pairs}
        self.tails = tails()
        self.requests = 0
        self.connections = 0

    def klines(self, q: dict[str, str]) -> tuple[int, bytes]:
        market = q.get("symbol", "")
        if market not in self.pairs:
            return 400, b'{"code":-1121,"msg":"Invalid symbol."}'
        step = STEPS[q.get("interval", "1m")]
        start = -(-int(q.get("startTime", "0")) // 1000)
        end = min(self.horizon, int(q["endTime"]) // 1000 + 1 if "endTime" in q else self.horizon)
        limit = min(int(q.get("limit", "500")), 1000)
        first = -(-start // step) * step
        offset = zlib.crc32(market.encode())
        tails = self.tails
        rows = [f"[{t * 1000},{tails[(t // step + offset) % TABLE]},{(t + step) * 1000 - 1},"
                f'"0.0",10,"0.0","0.0","0"]' for t in range(first, min(end, first + limit * step), step)]
        return 200, ("[" + ",".join(rows) + "]").encode()

    def exchange_info(self) -> bytes:
        symbols = [{"symbol": m, "status": "TRADING", "baseAsset": p.split("/")[0], "quoteAsset": p.split("/")[1],
                    "baseAssetPrecision": 8, "quotePrecision": 8, "quoteAssetPrecision": 8,
                    "orderTypes": ["LIMIT", "MARKET"], "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
                    "permissions": ["SPOT"], "permissionSets": [["SPOT"]], "filters": []}
                   for m, p in self.pairs.items()]
        return json.dumps({"timezone": "UTC", "serverTime": self.horizon * 1000, "rateLimits": [],
                           "exchangeFilters": [], "symbols": symbols}).encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode()
                parts = urlsplit(target)
                q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                if parts.path == "/__stats":
                    status, body = 200, json.dumps({"requests": self.requests,
                                                    "connections": self.connections}).encode()
                else:
                    self.requests += 1
                    await asyncio.sleep(self.latency)
                    if parts.path == "/api/v3/klines":
                        status, body = self.klines(q)
                    elif parts.path == "/api/v3/exchangeInfo":
                        status, body = 200, self.exchange_info()
                    else:
                        status, body = 404, b'{"code":-1,"msg":"not here"}'
                writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % (status, len(body)) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def main(port_file: Path, latency_ms: float, horizon: int, pairs: list[str]) -> None:
    exchange = Exchange(latency_ms / 1000, horizon, pairs)
    server = await asyncio.start_server(exchange.handle, "127.0.0.1", 0, backlog=256)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")))
