"""OHLCV bars as Parquet parts on object storage (S3 and S3-compatible servers, through s3fs).

Layout (the local Parquet layout, with a manifest instead of renames)::

    <url>/<provider>/<timeframe>/<FILE>.parquet/_manifest.json
    <url>/<provider>/<timeframe>/<FILE>.parquet/part-<FIRST>-<LAST>-<UUID>.parquet

The manifest is the series' one commit point: ``{"version", "parts": [{name, first, last, rows,
size}], "ranges": [[start, end], ...], "retired": [{name, at}], "swept_at"}``. A part is visible
only while the manifest names it; parts are written once under a unique name and never changed.

A write (``write``, ``replace``, ``erase``, ``set_aside``): read the manifest and its ETag; upload
the new part (the bars merged with the parts they overlap); put the new manifest with
``If-Match: <ETag>`` (``If-None-Match: *`` for a series' first). When another writer committed in
between, the put fails (412) and the write starts again from the new manifest; its uploaded part
is deleted. So:

- two writers: each commit is made on the state it read; a lost race redoes its merge;
- a crash (or a failed request) before the manifest put leaves an unnamed part: invisible garbage
  (``sweep`` deletes those older than an age); after it, the write is whole;
- a retried upload is a new unique name: only the part the manifest names counts, never both;
- parts named by the manifest hold disjoint time ranges (a new part replaces every part it
  overlaps), so no bar is ever doubled.

Replaced parts are kept ``GRACE_S`` as ``retired`` (a reader that read the previous manifest may
still be reading them), then deleted by a later commit; orphans are swept by a commit once per
``GRACE_S`` per series (``sweep``). There is no lock (``lock`` is a no-op):
the conditional put is the only arbitration, between threads, processes and hosts alike. The
range claims of local stores (storage/claims.py) do not exist here: two jobs on one series may
fetch the same range; both store it and the bars are the same.

Conditional writes need S3 semantics (AWS S3 since late 2024; moto, which the tests use): a server
must honour ``If-Match`` / ``If-None-Match`` on PutObject, which ``check_bucket`` tries before a job
starts. Other fsspec schemes are refused. Where the server is: ``AWS_ENDPOINT_URL`` (botocore
reads it); credentials as the AWS SDKs find them.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ktrdr_collect.storage import series
from ktrdr_collect.storage.gaps import Interval, merge_intervals, subtract
from ktrdr_collect.storage.parquet_store import (
    MAX_PARTS,
    SUFFIX,
    VALUE_COLUMNS,
    merge_bars,
    part_bytes,
    table_to_bars,
    ts_name,
)
from ktrdr_collect.storage.paths import file_stem
from ktrdr_collect.storage.series import Bar, changed_rows

MANIFEST = "_manifest.json"
MANIFEST_VERSION = 1
SET_ASIDE_PREFIX = "_set_aside."
GRACE_S = 3600.0
"""How long a replaced part stays readable (for readers of the previous manifest)."""
MAX_ATTEMPTS = 200
SCHEMES = ("s3", "s3a")
S3_MISSING = "--data-dir s3://... needs s3fs: pip install 'ktrdr-collect[s3]'"


class Conflict(Exception):
    """Another writer committed the manifest since we read it."""


@dataclass(frozen=True)
class PartRef:
    name: str
    first: int
    last: int
    rows: int
    size: int

    def doc(self) -> dict[str, Any]:
        return {"name": self.name, "first": self.first, "last": self.last, "rows": self.rows, "size": self.size}


@dataclass
class Manifest:
    parts: list[PartRef] = field(default_factory=list)
    ranges: list[Interval] | None = None
    """None: no manifest yet."""
    retired: list[tuple[str, float]] = field(default_factory=list)
    etag: str | None = None
    swept_at: float | None = None
    """When the series' folder was last swept of orphans (``sweep``)."""

    def to_bytes(self) -> bytes:
        doc = {"version": MANIFEST_VERSION, "parts": [p.doc() for p in self.parts],
               "ranges": [[s, e] for s, e in self.ranges or []],
               "retired": [{"name": n, "at": at} for n, at in self.retired], "swept_at": self.swept_at}
        return (json.dumps(doc) + "\n").encode()


def parse_manifest(raw: bytes, etag: str | None) -> Manifest:
    """The manifest in ``raw``; ValueError when it is not one we wrote (it is never overwritten
    then: it may name parts we would lose)."""
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("version") != MANIFEST_VERSION:
        raise ValueError("not a manifest of version 1")
    ranges = series.coverage_from_doc({"version": series.COVERAGE_VERSION, "ranges": doc.get("ranges")})
    if ranges is None:
        raise ValueError("bad ranges")
    parts = []
    for item in doc.get("parts", []):
        name, numbers = item["name"], [item[k] for k in ("first", "last", "rows", "size")]
        if not (isinstance(name, str) and name.startswith("part-") and "/" not in name
                and all(type(n) is int for n in numbers)):
            raise ValueError(f"bad part {item!r}")
        parts.append(PartRef(name, *numbers))
    retired = [(str(r["name"]), float(r["at"])) for r in doc.get("retired", [])]
    if any("/" in name or not name.startswith("part-") for name, _ in retired):
        raise ValueError("bad retired part")
    swept_at = doc.get("swept_at")
    if swept_at is not None and type(swept_at) not in (int, float):
        raise ValueError("bad swept_at")
    return Manifest(sorted(parts, key=lambda p: (p.first, p.last)), ranges, retired, etag,
                    None if swept_at is None else float(swept_at))


def is_conflict(error: BaseException) -> bool:
    """A failed conditional put: 412 Precondition Failed, or 409 when two conditional puts race."""
    for e in (error, error.__cause__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return True
    return False


def open_fs(url: str) -> Any:
    """The fsspec filesystem for ``url`` (s3fs); refuses schemes without conditional writes."""
    scheme = url.split("://", 1)[0]
    if scheme not in SCHEMES:
        raise ValueError(f"object storage '{scheme}://' is not supported: --format parquet on a URL needs "
                         "s3:// (conditional writes); use a local folder otherwise")
    try:
        import s3fs
    except ImportError:
        raise ModuleNotFoundError(S3_MISSING) from None
    return s3fs.S3FileSystem()


class ObjectParquetStore:
    """Parquet parts of bars under the URL ``root`` (storage.store.Store, with URLs for paths);
    see the module doc for the commit protocol."""

    format = "parquet"
    suffix = SUFFIX

    def __init__(self, root: str, fs: Any = None, max_parts: int = MAX_PARTS,
                 clock: Callable[[], float] = time.time, grace_s: float = GRACE_S) -> None:
        if max_parts < 2:
            raise ValueError("max_parts must be at least 2")
        self.root = root.rstrip("/")
        self.fs = fs if fs is not None else open_fs(self.root)
        self.max_parts = max_parts
        self.clock = clock
        self.grace_s = grace_s
        self.requests: Counter[str] = Counter()
        """Requests made, by S3 operation (for tests and the bench)."""
        self._counting = threading.Lock()

    def __repr__(self) -> str:
        return f"ObjectParquetStore({self.root!r})"

    # where (URLs)

    def folder(self, provider: str, timeframe: str) -> str:
        series.series_folder(Path("."), provider, timeframe)  # refuses names that would leave the root
        return f"{self.root}/{provider}/{timeframe}"

    def path(self, provider: str, timeframe: str, symbol: str) -> str:
        return f"{self.folder(provider, timeframe)}/{file_stem(symbol)}{SUFFIX}"

    def coverage_path(self, provider: str, timeframe: str, symbol: str) -> str:
        return f"{self.path(provider, timeframe, symbol)}/{MANIFEST}"

    def lock(self, provider: str, timeframe: str, symbol: str) -> contextlib.AbstractContextManager[None]:
        """No lock: every commit is a conditional put of the manifest (module doc)."""
        return contextlib.nullcontext()

    # requests

    def _split(self, url: str) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(url)
        return bucket, key

    def _count(self, op: str) -> None:
        with self._counting:
            self.requests[op] += 1

    def _call(self, op: str, **kwargs: Any) -> Any:
        self._count(op)
        return self.fs.call_s3(op, **kwargs)

    def _get(self, url: str) -> tuple[bytes, str | None] | None:
        """The object's bytes and ETag, or None when there is none."""
        from fsspec.asyn import sync

        bucket, key = self._split(url)
        self._count("get_object")

        async def get() -> tuple[bytes, str | None]:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            try:
                return await resp["Body"].read(), resp.get("ETag")
            finally:
                resp["Body"].close()

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def _put(self, url: str, data: bytes, etag: str | None = None, create: bool = False) -> None:
        """Put ``data``; ``etag``: only over that version; ``create``: only where there is none.
        Raises Conflict when the condition fails."""
        bucket, key = self._split(url)
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"} if create else {}
        try:
            self._call("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        except (OSError, ValueError) as e:
            if is_conflict(e):
                raise Conflict(url) from e
            raise

    def _delete(self, urls: Sequence[str]) -> None:
        """Best effort: what is left is garbage nobody reads (``sweep``)."""
        for url in urls:
            bucket, key = self._split(url)
            with contextlib.suppress(OSError):
                self._call("delete_object", Bucket=bucket, Key=key)

    # the manifest

    def manifest(self, provider: str, timeframe: str, symbol: str) -> Manifest:
        url = self.coverage_path(provider, timeframe, symbol)
        got = self._get(url)
        if got is None:
            return Manifest()
        try:
            return parse_manifest(*got)
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            raise ValueError(f"{url} is not a manifest this program wrote ({e}); move it away to start over") from None

    def _upload(self, key: tuple[str, str, str], bars: Sequence[Bar]) -> PartRef:
        first, last = bars[0][0], bars[-1][0]
        name = f"part-{ts_name(first)}-{ts_name(last)}-{uuid.uuid4().hex}{SUFFIX}"
        data = part_bytes(bars, key)
        self._put(f"{self.path(*key)}/{name}", data)  # unconditional: a retried put writes the same bytes
        return PartRef(name, first, last, len(bars), len(data))

    def _read_part(self, key: tuple[str, str, str], part: PartRef) -> list[Bar]:
        got = self._get(f"{self.path(*key)}/{part.name}")
        if got is None:
            raise FileNotFoundError(f"{self.path(*key)}/{part.name}")
        return table_to_bars(pq.read_table(pa.BufferReader(got[0]), columns=["timestamp", *VALUE_COLUMNS]))

    def _commit(self, key: tuple[str, str, str], change: Callable[[Manifest], tuple[Manifest, list[PartRef], Any]],
                retire: bool = True) -> Any:
        """Apply ``change`` (old manifest -> new manifest, parts it uploaded, result) and commit it
        with a conditional put; on a conflict, delete the uploads and start again. Parts the new
        manifest drops are retired (deleted after ``grace_s``) unless ``retire`` is False."""
        url = self.coverage_path(*key)
        for attempt in range(MAX_ATTEMPTS):
            began = self.clock()
            old = self.manifest(*key)
            new, uploaded, result = change(old)
            now = self.clock()
            if uploaded and now - began > self.grace_s / 2:  # a sweep may take uploads this old for orphans
                self._delete([f"{self.path(*key)}/{p.name}" for p in uploaded])
                continue
            due = old.swept_at is not None and now - old.swept_at >= self.grace_s
            new.swept_at = now if old.swept_at is None or due else old.swept_at
            replaced = {p.name for p in old.parts} - {p.name for p in new.parts}
            expired = [n for n, at in old.retired if now - at >= self.grace_s]
            new.retired = [(n, at) for n, at in old.retired if now - at < self.grace_s]
            if retire:
                new.retired += [(n, now) for n in sorted(replaced)]
            try:
                self._put(url, new.to_bytes(), etag=old.etag, create=old.etag is None)
            except Conflict:
                if uploaded and self._committed(key, uploaded):  # a retried put whose first try landed
                    return result
                self._delete([f"{self.path(*key)}/{p.name}" for p in uploaded])
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**min(attempt, 6))))  # back off, out of step
                continue
            self._delete([f"{self.path(*key)}/{n}" for n in expired])
            if due:  # once per grace period per series: one listing
                self.sweep(*key, older_than_s=self.grace_s)
            return result
        raise RuntimeError(f"{url}: gave up after {MAX_ATTEMPTS} conflicting commits")

    def _compact(self, key: tuple[str, str, str], parts: list[PartRef], uploaded: list[PartRef]) -> list[PartRef]:
        """While there are more than ``max_parts`` parts, merge the run of ``max_parts // 2 + 1``
        adjacent parts with the fewest rows into one (rows from the manifest: no reads to choose)."""
        while len(parts) > self.max_parts:
            width = self.max_parts // 2 + 1
            sums = [sum(p.rows for p in parts[i : i + width]) for i in range(len(parts) - width + 1)]
            i = sums.index(min(sums))
            run = parts[i : i + width]
            merged = self._upload(key, merge_bars([self._read_part(key, p) for p in run], []))
            uploaded.append(merged)
            parts = parts[:i] + [merged] + parts[i + width :]
        return parts

    # reading

    def read(self, provider: str, timeframe: str, symbol: str, start: int | None = None,
             end: int | None = None) -> list[Bar]:
        """Stored bars with ``start <= ts < end`` (either bound optional), ascending."""
        key = (provider, timeframe, symbol)
        for attempt in range(10):
            m = self.manifest(*key)
            try:
                bars: list[Bar] = []
                for part in m.parts:
                    if (start is not None and part.last < start) or (end is not None and part.first >= end):
                        continue
                    bars.extend(b for b in self._read_part(key, part)
                                if (start is None or b[0] >= start) and (end is None or b[0] < end))
                return bars
            except FileNotFoundError:  # retired and deleted while we read (a reader slower than GRACE_S)
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")

    def first_ts(self, provider: str, timeframe: str, symbol: str) -> int | None:
        parts = self.manifest(provider, timeframe, symbol).parts
        return parts[0].first if parts else None

    def last_ts(self, provider: str, timeframe: str, symbol: str) -> int | None:
        parts = self.manifest(provider, timeframe, symbol).parts
        return max(p.last for p in parts) if parts else None

    def coverage(self, provider: str, timeframe: str, symbol: str) -> list[Interval]:
        """The manifest's fetched ranges (one request)."""
        return list(self.manifest(provider, timeframe, symbol).ranges or [])

    def count(self, provider: str, timeframe: str, symbol: str, ranges: Sequence[Interval]) -> int:
        return series.count_series(self, (provider, timeframe, symbol), ranges)  # type: ignore[arg-type]

    def row_count(self, provider: str, timeframe: str, symbol: str) -> int:
        return sum(p.rows for p in self.manifest(provider, timeframe, symbol).parts)

    def size(self, provider: str, timeframe: str, symbol: str) -> int:
        return sum(p.size for p in self.manifest(provider, timeframe, symbol).parts)

    # writing

    def write(self, provider: str, timeframe: str, symbol: str, bars: Sequence[Bar], covered: Interval) -> int:
        """Store ``bars`` (ascending, inside ``covered``) and record ``covered`` as fetched, in one
        commit; returns how many rows the series gained or changed."""
        series.check_bars(bars, covered)
        key = (provider, timeframe, symbol)

        def change(old: Manifest) -> tuple[Manifest, list[PartRef], int]:
            ranges = merge_intervals([*(old.ranges or []), covered])
            if not bars:
                return Manifest(list(old.parts), ranges), [], 0
            first, last = bars[0][0], bars[-1][0]
            hit = [p for p in old.parts if p.first <= last and first <= p.last]
            written, merged = len(bars), list(bars)
            if hit:
                stored = [self._read_part(key, p) for p in hit]
                written = changed_rows({b[0]: b for part in stored for b in part}, bars)
                merged = merge_bars(stored, bars)
            uploaded = [self._upload(key, merged)]
            parts = sorted([p for p in old.parts if p not in hit] + uploaded, key=lambda p: (p.first, p.last))
            parts = self._compact(key, parts, uploaded)
            return Manifest(parts, ranges), uploaded, written

        return int(self._commit(key, change))

    def replace(self, provider: str, timeframe: str, symbol: str, bars: Sequence[Bar],
                ranges: Sequence[Interval]) -> None:
        """Replace the whole series and its fetched ranges, in one commit."""
        series.check_bars(bars, (bars[0][0], bars[-1][0] + 1) if bars else (0, 0))
        key = (provider, timeframe, symbol)

        def change(old: Manifest) -> tuple[Manifest, list[PartRef], None]:
            uploaded = [self._upload(key, bars)] if bars else []
            return Manifest(list(uploaded), merge_intervals(list(ranges))), uploaded, None

        self._commit(key, change)

    def erase(self, provider: str, timeframe: str, symbol: str, start: int | None = None,
              end: int | None = None) -> int:
        """Remove the bars in ``[start, end)`` and that range from the fetched ranges, in one
        commit; returns how many bars went."""
        key = (provider, timeframe, symbol)
        window = series.erase_window(start, end)
        lo, hi = window

        def change(old: Manifest) -> tuple[Manifest, list[PartRef], int]:
            kept_ranges = [piece for r in old.ranges or [] for piece in subtract(r, [window])]
            hit = [p for p in old.parts if p.first < hi and lo <= p.last]
            stored = [b for p in hit for b in self._read_part(key, p)]
            kept = series.outside(stored, start, end)
            uploaded = [self._upload(key, kept)] if kept else []
            parts = sorted([p for p in old.parts if p not in hit] + uploaded, key=lambda p: (p.first, p.last))
            return Manifest(parts, merge_intervals(kept_ranges)), uploaded, len(stored) - len(kept)

        if self.manifest(*key).ranges is None:
            return 0
        return int(self._commit(key, change))

    def set_aside(self, provider: str, timeframe: str, symbol: str, tag: str) -> str | None:
        """Forget the series (empty manifest) after keeping its manifest as
        ``_set_aside.<tag>[.N].json`` beside it (its parts stay: nothing retires them).
        Returns where the copy went."""
        key = (provider, timeframe, symbol)
        current = self.manifest(*key)
        if not current.parts:
            if current.ranges:
                self._commit(key, lambda old: (Manifest(list(old.parts), []), [], None))
            return None
        n = 0
        while True:
            target = f"{self.path(*key)}/{SET_ASIDE_PREFIX}{tag}{f'.{n}' if n else ''}.json"
            try:
                self._put(target, current.to_bytes(), create=True)
                break
            except (Conflict, FileExistsError):
                n += 1

        def change(old: Manifest) -> tuple[Manifest, list[PartRef], None]:
            if old.etag != current.etag:
                raise RuntimeError(f"{self.path(*key)} changed while being set aside; try again")
            return Manifest([], []), [], None

        self._commit(key, change, retire=False)
        return target

    def _committed(self, key: tuple[str, str, str], uploaded: Sequence[PartRef]) -> bool:
        """Whether the manifest names (or has retired) one of ``uploaded``: unique names, so only
        our own commit can have put them there. A put whose answer was lost and which botocore
        retried fails its condition though it landed; its parts must not be deleted then."""
        m = self.manifest(*key)
        names = {p.name for p in m.parts} | {n for n, _ in m.retired}
        return any(p.name in names for p in uploaded)

    def sweep(self, provider: str, timeframe: str, symbol: str, older_than_s: float) -> list[str]:
        """Delete parts no manifest names (uploads of writes that crashed) last written more than
        ``older_than_s`` ago, and retired parts past the grace period; returns their URLs. Run by
        a commit once per ``grace_s`` per series (writers never commit an upload older than half
        of it, so a sweep at ``grace_s`` never takes a part about to be named)."""
        key = (provider, timeframe, symbol)
        m = self.manifest(*key)
        now = self.clock()
        keep = {p.name for p in m.parts} | {n for n, at in m.retired if now - at < self.grace_s}
        base = self.path(*key)
        for got in self._set_asides(base):
            with contextlib.suppress(ValueError, TypeError, KeyError):
                keep |= {p.name for p in parse_manifest(got, None).parts}
        self.fs.invalidate_cache(base)
        self._count("list_objects_v2")
        gone = []
        for info in self.fs.ls(base, detail=True, refresh=True):
            name = info["name"].rsplit("/", 1)[-1]
            modified = info.get("LastModified")
            if (name.startswith("part-") and name not in keep and modified is not None
                    and now - modified.timestamp() > older_than_s):
                gone.append(f"{base}/{name}")
        self._delete(gone)
        return gone

    def _set_asides(self, base: str) -> list[bytes]:
        found = []
        for name in self.fs.ls(base, detail=False, refresh=True):
            if name.rsplit("/", 1)[-1].startswith(SET_ASIDE_PREFIX):
                got = self._get(name)
                if got is not None:
                    found.append(got[0])
        return found


def check_bucket(url: str, fs: Any = None) -> None:
    """The bucket answers, and honours conditional puts (a server that ignored them would let
    two writers lose each other's bars): a probe object under ``url`` is created with
    ``If-None-Match: *``, created again (must fail), put with a wrong ``If-Match`` (must fail),
    then deleted. Raises OSError (or ValueError/ModuleNotFoundError) naming what is wrong."""
    fs = fs if fs is not None else open_fs(url)
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    if not bucket:
        raise ValueError("no bucket in the URL")
    fs.ls(bucket, refresh=True)
    store = ObjectParquetStore(url, fs=fs)
    probe = f"{store.root}/_probe-{uuid.uuid4().hex}"
    store._put(probe, b"1", create=True)
    try:
        for condition in ({"create": True}, {"etag": '"0123456789abcdef0123456789abcdef"'}):
            try:
                store._put(probe, b"2", **condition)  # type: ignore[arg-type]
            except Conflict:
                continue
            raise ValueError(f"the server ignores conditional writes ({', '.join(condition)}): "
                             "two writers could lose bars; use a server that honours If-Match / If-None-Match")
    finally:
        store._delete([probe])
