"""One plan for a collection, shared by `collect start` and the Python API: symbols, window,
provider and storage resolved once, everything checked before any job folder or file exists.

    plan = plan_job(["AAPL"], "1d", start=None, end=None, days=30, provider="demo", data_dir=Path("data"))

The CLI fills the defaults from config.toml and turns the plan into a job; the Python API passes its
own arguments and runs the engine on it directly (and reads no config unless asked).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ktrdr_collect import files
from ktrdr_collect.errors import InvalidInputError, UsageError
from ktrdr_collect.inputs import parse_symbols, resolve_window
from ktrdr_collect.storage.timeframes import TIMEFRAMES
from ktrdr_collect.storage.urls import as_url, local_path

MAX_WORKERS = 256


@dataclass(frozen=True)
class Plan:
    symbols: list[str]
    timeframe: str
    """The first of `timeframes`."""
    start: datetime | None
    """None: `earliest`, the provider's first bar (`earliest_ts` when planned)."""
    end: datetime
    earliest_ts: int
    provider: str
    options: dict[str, Any]
    """Every option the provider gets: config's (secrets included) under the caller's."""
    public_options: dict[str, Any]
    """What may be recorded and shown (no secrets)."""
    synthetic: bool
    workers: int
    data_dir: Path
    format: str
    name: str | None = None
    timeframes: tuple[str, ...] = ()
    """Every timeframe: the job collects each (symbol, timeframe) pair."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def start_ts(self) -> int:
        return int(self.start.timestamp()) if self.start is not None else self.earliest_ts

    @property
    def end_ts(self) -> int:
        return int(self.end.timestamp())


def as_text(value: datetime | str | int | float | None) -> str | None:
    """A window bound as `resolve_window` reads it: datetimes and epoch seconds become ISO text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    return datetime.fromtimestamp(float(value), UTC).isoformat()


def check_data_dir(root: Path, fmt: str = "csv") -> Path:
    """The data folder, created if missing and checked writable now, not by the first write. A URL
    (``s3://bucket/prefix``, parquet only) is checked by listing its bucket and probing its
    conditional writes (object_store.check_bucket); it is returned as a Path spelling the URL
    (``s3:/bucket/prefix``: storage.urls reads both)."""
    url = as_url(root)
    if url is not None:
        return Path(check_object_store(url, fmt))
    root = local_path(root).expanduser().resolve()
    try:
        files.make_dirs(root, files.DATA_DIR_MODE, root=root)
    except OSError as e:
        raise InvalidInputError(f"cannot use data folder {root}: {e.strerror or e}") from None
    if not root.is_dir():
        raise InvalidInputError(f"cannot use data folder {root}: not a directory")
    if not os.access(root, os.W_OK | os.X_OK):
        raise InvalidInputError(f"cannot use data folder {root}: not writable")
    return root


def check_object_store(url: str, fmt: str) -> str:
    from ktrdr_collect.storage.open import CSV_NEEDS_FOLDER, open_store

    if fmt != "parquet":
        raise InvalidInputError(CSV_NEEDS_FOLDER)
    open_store(fmt, url)  # pyarrow and s3fs installed, a scheme we can commit to
    from ktrdr_collect.storage.object_store import check_bucket

    try:
        check_bucket(url)
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"cannot use data folder {url}: {e}") from None
    return url


def parse_timeframes(texts: str | Sequence[str]) -> list[str]:
    """`-t 1h -t 1d` or `-t 1h,1d` (or both): each timeframe once, in the order given."""
    items = [texts] if isinstance(texts, str) else list(texts)
    found = [part.strip() for text in items for part in text.split(",") if part.strip()]
    if not found:
        raise InvalidInputError("no timeframe given")
    for tf in found:
        if tf not in TIMEFRAMES:
            raise InvalidInputError(f"unknown timeframe '{tf}' (choose from: {' '.join(TIMEFRAMES)})")
    return list(dict.fromkeys(found))


def window_rule(timeframes: Sequence[str]) -> str:
    """Which timeframe's rule a window counted in days follows when a job has several: the widest
    (`1w` starts on a Monday, `1d` at midnight), so that every timeframe's first bar is in it."""
    for tf in ("1w", "1d"):
        if tf in timeframes:
            return tf
    return timeframes[0]


def plan_job(
    symbols: Sequence[str],
    timeframe: str | Sequence[str],
    start: datetime | str | int | None,
    end: datetime | str | int | None,
    days: int | None,
    provider: str,
    data_dir: Path,
    *,
    default_days: int = 365,
    options: Mapping[str, Any] | None = None,
    base_options: Mapping[str, Any] | None = None,
    recorded: bool = True,
    workers: int = 4,
    fmt: str = "csv",
    name: str | None = None,
    now: datetime | None = None,
) -> Plan:
    """Resolve and check a collection. `options` are the caller's (`-o`); `base_options` the
    provider's settings from config (secrets live there). With `recorded` (a job, whose options
    are written down), options carrying credentials are refused. Raises InvalidInputError (or
    UsageError) with one line naming what is wrong."""
    from ktrdr_collect.providers.base import reject_secret_options
    from ktrdr_collect.providers.registry import canonical_name, provider_class
    from ktrdr_collect.storage.open import open_store

    if not symbols:
        raise UsageError("no symbols given (pass SYMBOL... or -f FILE)")
    names = parse_symbols(list(symbols))
    timeframes = parse_timeframes(timeframe)
    now = now or datetime.now(UTC)
    start_dt, end_dt = resolve_window(as_text(start), as_text(end), days, default_days, now, window_rule(timeframes))
    name_ = canonical_name(provider)
    cls = provider_class(name_)
    for tf in timeframes:
        if tf not in cls.timeframes:
            raise InvalidInputError(f"provider {name_} has no {tf} bars (it has: {' '.join(cls.timeframes)})")
    caller = dict(options or {})
    if recorded:
        reject_secret_options(cls, caller)
    merged = {**dict(base_options or {}), **caller}
    try:
        instance = cls(merged)
    except ValueError as e:
        raise InvalidInputError(f"provider {name_}: {e}") from None
    try:
        earliest = min(instance.earliest(tf) for tf in timeframes)
        public = instance.public_options()
        for tf in timeframes:
            first = int(start_dt.timestamp()) if start_dt is not None else instance.earliest(tf)
            try:
                instance.check_window(tf, first, int(end_dt.timestamp()), int(now.timestamp()))
            except ValueError as e:
                raise InvalidInputError(f"provider {name_}: {e}") from None
    finally:
        instance.close()
    if not 1 <= workers <= MAX_WORKERS:
        raise InvalidInputError(f"--workers must be between 1 and {MAX_WORKERS}, got {workers}")
    if name is not None and not name.strip():
        raise InvalidInputError("--name must not be empty")
    open_store(fmt, Path("."))  # an unknown format, or a missing extra, is refused here
    root = check_data_dir(data_dir, fmt)
    return Plan(symbols=names, timeframe=timeframes[0], timeframes=tuple(timeframes), start=start_dt, end=end_dt,
                earliest_ts=earliest,
                provider=name_, options=merged, public_options=public, synthetic=cls.synthetic, workers=workers,
                data_dir=root, format=fmt, name=name)
