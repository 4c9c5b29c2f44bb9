"""Binance's public kline archives (data.binance.vision): which archive can serve a span, and reading one.

Layout (binance/binance-public-data README, see docs/providers/binance.md):

    {archive_url}/data/spot/monthly/klines/{MARKET}/{interval}/{MARKET}-{interval}-YYYY-MM.zip
    {archive_url}/data/spot/daily/klines/{MARKET}/{interval}/{MARKET}-{interval}-YYYY-MM-DD.zip

each next to `<zip>.CHECKSUM`, sha256sum's line `<64 hex digits>  <file name>`. The zip holds one CSV
without a header: the API's 12 kline fields per row. Spot open and close times are milliseconds up to
2024-12-31 and microseconds from 2025-01-01 on; each value is read by its magnitude (>= 10**14 is
microseconds: as milliseconds that would be the year 5138, as microseconds 1973), so a file is read
right whatever its date and whichever unit Binance writes.

A daily archive appears the day after, a monthly one "at the first Monday of the month" after; an
archive is trusted only from a day after that (DAILY_READY_S, MONTHLY_READY_S), and one that is still
missing (404) is fetched from the API instead.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from ktrdr_collect.providers.base import Bar, Interrupt, PermanentError, ProviderError
from ktrdr_collect.providers.http import HttpFailure, HttpPool, get_bytes

if TYPE_CHECKING:
    from ktrdr_collect.storage.columns import Columns

DAY = 86_400
ARCHIVE_URL = "https://data.binance.vision"
SOURCES = ("auto", "api", "archive")
DAILY_READY_S = DAY
"""A day's archive is used from one day after the day ended (Binance: "available the next day")."""
MONTHLY_READY_S = 8 * DAY
"""A month's archive is used from the 8th of the next month (Binance: "at the first monday of the month")."""
MICROSECONDS_FROM = 10**14
"""An archive time at or above this is in microseconds (spot files from 2025-01-01), below in milliseconds."""
TIMEFRAMES = ("1m", "5m", "15m", "30m", "1h", "4h", "1d")
"""Timeframes read from archives (1w klines straddle months: always from the API)."""
_MISSING_STATUSES = frozenset({403, 404})  # S3 behind CloudFront answers 403 for a missing key, too


class ArchiveUnavailable(PermanentError):
    """The archive is missing or refused (corrupt, checksum mismatch): fetch its span from the API."""


@dataclass(frozen=True)
class Archive:
    """One archive file: a UTC month or a UTC day, [start, end)."""

    daily: bool
    start: int
    end: int

    @property
    def label(self) -> str:
        moment = datetime.fromtimestamp(self.start, UTC)
        return moment.strftime("%Y-%m-%d" if self.daily else "%Y-%m")

    def file_name(self, market: str, interval: str) -> str:
        return f"{market}-{interval}-{self.label}.zip"

    def path(self, market: str, interval: str) -> str:
        kind = "daily" if self.daily else "monthly"
        return f"data/spot/{kind}/klines/{market}/{interval}/{self.file_name(market, interval)}"

    def ready(self, now: float) -> bool:
        """Whether Binance has published it by `now` (with a day to spare)."""
        return now >= self.end + (DAILY_READY_S if self.daily else MONTHLY_READY_S)


def day_of(ts: int) -> Archive:
    start = ts - ts % DAY
    return Archive(True, start, start + DAY)


def month_of(ts: int) -> Archive:
    moment = datetime.fromtimestamp(ts, UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    following = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    return Archive(False, int(start.timestamp()), int(following.timestamp()))


def ready_archives(start: int, end: int, now: float) -> Iterator[Archive]:
    """The published archives over [start, end), in time order: each month's own archive once it is
    out, else that month's published daily archives."""
    month = month_of(start)
    while month.start < end:
        if month.ready(now):
            yield month
        else:
            day = day_of(max(start, month.start))
            while day.start < min(end, month.end) and day.ready(now):
                yield day
                day = day_of(day.end)
            if not day.ready(now):
                return  # later days and months are not out either
        month = month_of(month.end)


def holding(first: int, last: int, now: float) -> Archive | None:
    """The smallest published archive holding the open times `first` and `last`, or None."""
    for archive in (day_of(first), month_of(first)):
        if archive.end > last and archive.ready(now):
            return archive
    return None


def to_seconds(value: int) -> int:
    """An archive open time (milliseconds, or microseconds from 2025 on) as epoch seconds."""
    return value // 1_000_000 if value >= MICROSECONDS_FROM else value // 1000


def parse_checksum(raw: bytes) -> str:
    """The sha256 of a `.CHECKSUM` file (`<hex>  <name>`), lower case; ArchiveUnavailable if unreadable."""
    words = raw.decode("ascii", errors="replace").split()
    digest = words[0].lower() if words else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ArchiveUnavailable(f"unreadable CHECKSUM file: {raw[:80]!r}")
    return digest


def parse_csv(text: str) -> list[Bar]:
    """Rows `open time, open, high, low, close, volume, close time, ...` -> bars, ascending; a header
    line (some archives have one) is skipped; anything else unreadable refuses the archive."""
    bars: list[Bar] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(",")
        if number == 1 and not fields[0].strip().isdigit():
            continue  # a header
        try:
            if len(fields) < 6:
                raise ValueError(line)
            bars.append((to_seconds(int(fields[0])), float(fields[1]), float(fields[2]), float(fields[3]),
                         float(fields[4]), float(fields[5])))
        except ValueError:
            raise ArchiveUnavailable(f"malformed archive row {number}: {line[:120]!r}") from None
    bars.sort(key=lambda b: b[0])
    return bars


@cache
def _row_decoder() -> Any:
    """msgspec's typed decoder for archive rows once they are spelled as a JSON array of arrays
    (their fields are plain numbers): open time and OHLCV; the other fields are skipped unread."""
    import msgspec

    class Row(msgspec.Struct, array_like=True):
        open_time: int
        open: float
        high: float
        low: float
        close: float
        volume: float

    return msgspec.json.Decoder(list[Row])


def parse_columns(text: str) -> Columns:
    """`parse_csv` as columns, without a Python step per value: the CSV's lines become one JSON array
    of arrays for msgspec's typed decoder; times are converted column-wise. Anything that does not
    decode so (a blank line inside, a stray field) goes through `parse_csv`, which says what is wrong."""
    import msgspec
    import numpy as np

    from ktrdr_collect.storage.columns import Columns

    body = text.strip()
    if body and not body[:1].isdigit():
        body = body.partition("\n")[2].strip()  # a header
    if not body:
        return Columns.empty()
    try:
        rows = _row_decoder().decode(("[[" + body.replace("\r\n", "\n").replace("\n", "],[") + "]]").encode())
    except msgspec.DecodeError:
        return Columns.from_bars(parse_csv(text))
    opens = np.fromiter((row.open_time for row in rows), np.int64, len(rows))
    values = np.array([(r.open, r.high, r.low, r.close, r.volume) for r in rows], np.float64).reshape(len(rows), 5)
    ts = np.where(opens >= MICROSECONDS_FROM, opens // 1_000_000, opens // 1000)
    return Columns(ts, values).sorted_unique()


def read_zip(data: bytes) -> str:
    """The CSV inside an archive; ArchiveUnavailable if it is not a zip holding one."""
    import zipfile  # on first use: a job that reads no archive does not pay for it

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = [n for n in z.namelist() if n.lower().endswith(".csv")]
            if not names:
                raise ArchiveUnavailable("archive holds no CSV file")
            return z.read(names[0]).decode("utf-8", errors="replace")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise ArchiveUnavailable(f"unreadable archive: {e}") from None


def classify_archive(failure: HttpFailure) -> ProviderError | None:
    """A missing or refused archive falls back to the API; rate limits and 5xx are read as usual."""
    if failure.status in (418, 429) or failure.status >= 500:
        return None
    if failure.status in _MISSING_STATUSES:
        return ArchiveUnavailable(f"no such archive (HTTP {failure.status})")
    return ArchiveUnavailable(f"archive refused ({failure.summary()})")


class ArchiveReader:
    """Downloads, verifies and reads archives from `archive_url` over a provider's HTTP pool."""

    def __init__(self, archive_url: str, pool: HttpPool, timeout: Callable[[], float]) -> None:
        self.archive_url = archive_url.rstrip("/")
        self.pool = pool
        self.timeout = timeout

    def url(self, archive: Archive, market: str, interval: str) -> str:
        return f"{self.archive_url}/{archive.path(market, interval)}"

    def _get(self, url: str, interrupt: Interrupt | None) -> bytes:
        return get_bytes(url, timeout=self.timeout(), interrupt=interrupt, headers={"Accept": "*/*"},
                         classify=classify_archive, pool=self.pool)

    def bars(self, archive: Archive, market: str, interval: str, interrupt: Interrupt | None) -> Columns:
        """The archive's bars, after its CHECKSUM matched. Raises ArchiveUnavailable (missing, refused,
        corrupt), RateLimitedError, TransientError or RequestCancelled."""
        url = self.url(archive, market, interval)
        expected = parse_checksum(self._get(f"{url}.CHECKSUM", interrupt))
        data = self._get(url, interrupt)
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ArchiveUnavailable(f"checksum mismatch for {archive.file_name(market, interval)}: "
                                     f"sha256 {actual}, CHECKSUM says {expected}")
        return parse_columns(read_zip(data))
