"""Local stand-ins for the Binance and Yahoo APIs, answering in each real API's format from
deterministic generated data, plus scripted failures (429, 5xx, garbage, slow, dropped)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ktrdr_collect.storage.calendar import AlwaysOpenCalendar
from ktrdr_collect.storage.timeframes import timeframe_seconds

Action = Callable[["Handler"], None]


@dataclass
class Request:
    path: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeApi:
    """Routes requests to `route`, unless a scripted action is queued for the next request."""

    route: Callable[[Handler, Request], None]
    requests: list[Request] = field(default_factory=list)
    script: deque[Action] = field(default_factory=deque)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, handler: Handler) -> None:
        parts = urlsplit(handler.path)
        request = Request(unquote(parts.path), {k: v[-1] for k, v in parse_qs(parts.query).items()},
                          dict(handler.headers.items()))
        with self.lock:
            self.requests.append(request)
            action = self.script.popleft() if self.script else None
        if action is not None:
            action(handler)
        else:
            self.route(handler, request)

    def paths(self, prefix: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(prefix)]


class Handler(BaseHTTPRequestHandler):
    server: ApiServer

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.server.api.handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_body(self, status: int, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self.send_body(status, json.dumps(doc).encode(), headers=headers)


class ApiServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close joins the handler threads

    def __init__(self, api: FakeApi) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.api = api

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@dataclass
class Running:
    server: ApiServer
    api: FakeApi

    @property
    def url(self) -> str:
        return self.server.url

    def queue(self, *actions: Action) -> None:
        with self.api.lock:
            self.api.script.extend(actions)


def serve(route: Callable[[Handler, Request], None]) -> Iterator[Running]:
    """A server on 127.0.0.1:<free port> in a thread; shut down and joined afterwards."""
    api = FakeApi(route)
    server = ApiServer(api)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-api")
    thread.start()
    try:
        yield Running(server, api)
    finally:
        api.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


# --- scripted failures --------------------------------------------------------------------------


def status(code: int, doc: Any = None, text: str = "", headers: dict[str, str] | None = None) -> Action:
    def act(h: Handler) -> None:
        if doc is not None:
            h.send_json(code, doc, headers)
        else:
            h.send_body(code, text.encode(), "text/plain", headers)
    return act


def garbage(text: str = "<html>oops</html>") -> Action:
    return status(200, text=text)


def slow(api: FakeApi, seconds: float = 5.0, on_arrival: Callable[[], None] | None = None) -> Action:
    """Hold the request (until the test ends or `seconds`), then answer; the client times out first."""
    def act(h: Handler) -> None:
        if on_arrival is not None:
            on_arrival()
        api.release.wait(seconds)
        h.close_connection = True
    return act


def drop_body(h: Handler) -> None:
    """Announce 1000 bytes, send 10, hang up: the client sees a truncated body."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", "1000")
    h.end_headers()
    h.wfile.write(b'[[1,"2","3"')
    h.wfile.flush()
    h.close_connection = True
    h.connection.shutdown(socket.SHUT_RDWR)


def reset(h: Handler) -> None:
    """Reset the connection before any response (RST)."""
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    h.close_connection = True
    h.connection.close()


# --- deterministic market data ------------------------------------------------------------------


def price_bar(name: str, ts: int) -> tuple[float, float, float, float, float]:
    """(open, high, low, close, volume) for `name` at `ts`: depends on nothing else."""
    h = zlib.crc32(f"{name}:{ts}".encode())
    base = 100 + zlib.crc32(name.encode()) % 900 + (ts // 3600) % 50
    o = round(base + (h % 100) / 100, 2)
    c = round(base + ((h >> 8) % 100) / 100, 2)
    return o, round(max(o, c) + 1.25, 2), round(min(o, c) - 0.75, 2), c, float((h >> 16) % 5000)


BINANCE_LISTED = {"BTCUSDT": 1_502_942_400, "ETHUSDT": 1_502_942_400, "SOLUSDT": 1_597_125_600}
BINANCE_CAL = AlwaysOpenCalendar()
BinancePrices = tuple[float, float, float, float, float]
BinanceKline = tuple[int, float, float, float, float, float]


def binance_klines(listed: int, prices: Callable[[int], BinancePrices], tf: str, start: int,
                   end: int) -> list[BinanceKline]:
    """Klines of a pair first traded at `listed`, for open times in [start, end). Like Binance's,
    the first opens at the start of the period holding `listed` (a mid-week listing's Monday)."""
    first = max(start, listed - timeframe_seconds(tf) + 1)
    return [(ts, *prices(ts)) for ts in BINANCE_CAL.bar_times(tf, first, end)]


def binance_bars(market: str, tf: str, start: int, end: int) -> list[BinanceKline]:
    """What the fake Binance has for open times in [start, end)."""
    return binance_klines(BINANCE_LISTED[market], lambda ts: price_bar(market, ts), tf, start, end)


def binance_route(h: Handler, r: Request) -> None:
    binance_klines_route(h, r, BINANCE_LISTED, binance_bars)


def binance_klines_route(h: Handler, r: Request, markets: Container[str],
                         bars_of: Callable[[str, str, int, int], list[BinanceKline]]) -> None:
    """Answer `GET /api/v3/klines` like Binance: open times >= startTime and <= endTime, `limit` rows
    (default 500, at most 1000), prices as 8-decimal strings, close time = next open - 1 ms."""
    if r.path != "/api/v3/klines":
        h.send_json(404, {"code": -1, "msg": "not found"})
        return
    market = r.params.get("symbol", "")
    if market not in markets:
        h.send_json(400, {"code": -1121, "msg": "Invalid symbol."})
        return
    tf = r.params.get("interval", "")
    try:
        step = timeframe_seconds(tf)
    except ValueError:
        h.send_json(400, {"code": -1120, "msg": "Invalid interval."})
        return
    start_ms, end_ms = int(r.params.get("startTime", 0)), int(r.params.get("endTime", 4_102_444_800_000))
    limit = min(int(r.params.get("limit", 500)), 1000)
    bars = bars_of(market, tf, -(-start_ms // 1000), end_ms // 1000 + 1)[:limit]
    rows = [[ts * 1000, f"{o:.8f}", f"{hi:.8f}", f"{lo:.8f}", f"{c:.8f}", f"{v:.8f}", (ts + step) * 1000 - 1,
             "0.0", 10, "0.0", "0.0", "0"] for ts, o, hi, lo, c, v in bars]
    h.send_json(200, rows)
