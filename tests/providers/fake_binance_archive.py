"""A local stand-in for data.binance.vision: monthly and daily kline archives (zip + .CHECKSUM) built
on request from the same synthetic klines the fake API serves (fake_apis.binance_bars), in the real
layout; open and close times in milliseconds before 2025-01-01 and microseconds from then on, like
Binance's spot files. Archives can be made missing (404) or corrupt (bytes changed after the
CHECKSUM was computed). `exchange_route` answers both the API and the archives from one server."""

from __future__ import annotations

import hashlib
import io
import re
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ktrdr_collect.storage.timeframes import timeframe_seconds
from tests.providers.fake_apis import (
    BINANCE_LISTED,
    BinanceKline,
    Handler,
    Request,
    binance_klines,
    binance_klines_route,
    price_bar,
)

MICROSECONDS_FROM_TS = 1_735_689_600  # 2025-01-01T00:00:00Z: spot archives switch to microseconds
_PATH = re.compile(r"^/data/spot/(monthly|daily)/klines/([A-Z0-9]+)/([0-9a-z]+)/"
                   r"([A-Z0-9]+)-([0-9a-z]+)-(\d{4})-(\d{2})(?:-(\d{2}))?\.zip(\.CHECKSUM)?$")


def period(year: int, month: int, day: int | None) -> tuple[int, int]:
    start = datetime(year, month, day or 1, tzinfo=UTC)
    if day is not None:
        return int(start.timestamp()), int(start.timestamp()) + 86_400
    following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(following.timestamp())


def market_bars(listed: dict[str, int], market: str, tf: str, start: int, end: int) -> list[BinanceKline]:
    """What the fake exchange has for `market` (listed at `listed[market]`): fake_apis.binance_bars's data."""
    return binance_klines(listed[market], lambda ts: price_bar(market, ts), tf, start, end)


def archive_csv(market: str, tf: str, start: int, end: int, header: bool = False,
                listed: dict[str, int] = BINANCE_LISTED) -> bytes:
    step = timeframe_seconds(tf)
    lines = ["open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
             "taker_buy_quote_volume,ignore"] if header else []
    for ts, o, hi, lo, c, v in market_bars(listed, market, tf, start, end):
        unit = 1_000_000 if ts >= MICROSECONDS_FROM_TS else 1000
        lines.append(f"{ts * unit},{o:.8f},{hi:.8f},{lo:.8f},{c:.8f},{v:.8f},{(ts + step) * unit - 1},"
                     f"0.0,10,0.0,0.0,0")
    return ("\n".join(lines) + "\n").encode()


def archive_zip(name: str, csv: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name.removesuffix(".zip") + ".csv", csv)
    return out.getvalue()


@dataclass
class FakeArchive:
    """What the fake archive host serves for the `listed` markets; `missing` and `corrupt` hold zip file names."""

    listed: dict[str, int] = field(default_factory=lambda: dict(BINANCE_LISTED))
    missing: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)
    header: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    _cache: dict[str, bytes] = field(default_factory=dict)

    def zip_bytes(self, name: str, market: str, tf: str, start: int, end: int) -> bytes | None:
        with self.lock:
            cached = self._cache.get(name)
        if cached is None:
            csv = archive_csv(market, tf, start, end, self.header, self.listed)
            cached = archive_zip(name, csv) if csv.strip() else b""
            with self.lock:
                self._cache[name] = cached
        return cached or None

    def route(self, h: Handler, r: Request) -> None:
        m = _PATH.match(r.path)
        if m is None:
            h.send_body(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
            return
        _kind, market, tf, market2, tf2, year, month, day, checksum = m.groups()
        name = r.path.rsplit("/", 1)[1].removesuffix(".CHECKSUM")
        daily = _kind == "daily"
        if (market, tf) != (market2, tf2) or market not in self.listed or daily != (day is not None) \
                or name in self.missing:
            h.send_body(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
            return
        start, end = period(int(year), int(month), int(day) if day else None)
        data = self.zip_bytes(name, market, tf, start, end)
        if data is None:  # before the listing: Binance has no file
            h.send_body(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
            return
        if checksum:
            h.send_body(200, f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode(), "text/plain")
            return
        if name in self.corrupt:
            data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
        h.send_body(200, data, "application/zip")


def exchange_route(archive: FakeArchive) -> Callable[[Handler, Request], None]:
    """One server for both: `/data/...` from the archive, everything else from the fake API."""
    def route(h: Handler, r: Request) -> None:
        if r.path.startswith("/data/"):
            archive.route(h, r)
        else:
            binance_klines_route(h, r, archive.listed,
                                 lambda m, tf, start, end: market_bars(archive.listed, m, tf, start, end))
    return route
