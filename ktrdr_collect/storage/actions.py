"""Corporate actions stored beside a series, and the copy of a series kept before it is restated.

``<FILE>.actions.csv`` sits next to the data (``NVDA.csv`` -> ``NVDA.actions.csv``; a Parquet
series ``NVDA.parquet/`` uses the same CSV file, so both formats of one symbol share it), header
``timestamp,type,value``, one row per action, sorted, one per (timestamp, type)::

    timestamp,type,value
    2024-06-10T00:00:00Z,split,10
    2024-06-11T00:00:00Z,dividend,0.001

``timestamp`` is 00:00:00Z of the session date the action takes effect (a split's or dividend's
ex-date); a split's ``value`` is new shares per old share (10 for 10:1, 0.1 for a 1:10 reverse
split: the divisor of prices before it), a dividend's the amount per share. ``data verify``
reads the splits to tell a split from a price-scale break (storage/verify.py).

Before a series is restated (its bars fetched again on a new price scale), its bars are kept as
``<root>/<provider>/<timeframe>/.ktrdr/<FILE><tag>.before-restatement-<when>.csv`` (CSV whatever
the series' format). Every file here is written with files.atomic_write.
"""

from __future__ import annotations

import contextlib
import csv
import math
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from ktrdr_collect import files
from ktrdr_collect.storage import series
from ktrdr_collect.storage.series import Bar
from ktrdr_collect.storage.store import Store
from ktrdr_collect.storage.timeframes import format_ts, parse_ts

ACTIONS_SUFFIX = ".actions.csv"
HEADER = "timestamp,type,value\n"
TYPES = ("split", "dividend")
KEPT_TAG = "before-restatement"

Action = tuple[int, str, float]
"""(00:00Z of the ex-date, "split" | "dividend", ratio or amount)."""


def actions_path(data_path: Path) -> Path:
    """``<dir>/NVDA.csv`` or ``<dir>/NVDA.parquet`` -> ``<dir>/NVDA.actions.csv``."""
    return data_path.with_name(data_path.name.removesuffix(data_path.suffix) + ACTIONS_SUFFIX)


def series_actions_path(store: Store, provider: str, timeframe: str, symbol: str) -> Path:
    return actions_path(store.path(provider, timeframe, symbol))


def format_value(value: float) -> str:
    """``10``, ``0.1``, ``0.205``: the shortest text that reads back as the same float."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def format_actions(actions: Iterable[Action]) -> str:
    return HEADER + "".join(f"{format_ts(ts)},{kind},{format_value(value)}\n" for ts, kind, value in actions)


def read_actions(path: Path) -> list[Action]:
    """The actions in the file (none when it does not exist); rows that do not parse are skipped."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (FileNotFoundError, UnicodeDecodeError, csv.Error):
        return []
    found: dict[tuple[int, str], float] = {}
    for row in rows:
        kind = (row.get("type") or "").strip().lower()
        kind = {"splits": "split", "dividends": "dividend"}.get(kind, kind)
        try:
            ts = parse_ts((row.get("timestamp") or "").strip())
            value = float((row.get("value") or "").strip())
        except ValueError:
            continue
        if kind in TYPES and math.isfinite(value) and value > 0:
            found[(ts, kind)] = value
    return sorted((ts, kind, value) for (ts, kind), value in found.items())


def merged(stored: Sequence[Action], new: Iterable[Action]) -> list[Action]:
    """One action per (timestamp, type), sorted; a new value replaces a stored one (a revised amount)."""
    found = {(ts, kind): value for ts, kind, value in stored}
    for ts, kind, value in new:
        found[(ts, kind)] = value
    return sorted((ts, kind, value) for (ts, kind), value in found.items())


def store_actions(store: Store, provider: str, timeframe: str, symbol: str, new: Iterable[Action]) -> list[Action]:
    """Merge `new` into the series' actions file (under the series' lock); returns the actions
    that were not stored before. The file is only written when something changed."""
    path = series_actions_path(store, provider, timeframe, symbol)
    with store.lock(provider, timeframe, symbol):
        stored = read_actions(path)
        after = merged(stored, new)
        if after == stored:
            return []
        files.make_dirs(path.parent, files.DATA_DIR_MODE, store.root)
        files.atomic_write(path, format_actions(after).encode("utf-8"), mode=files.DATA_FILE_MODE, durable=True)
        known = set(stored)
        return [action for action in after if action not in known]


def keep_copy(store: Store, provider: str, timeframe: str, symbol: str, bars: Sequence[Bar], when: int) -> Path:
    """Write `bars` (the series as it was) to ``.ktrdr/<FILE><tag>.before-restatement-<when>.csv``;
    an earlier copy is never overwritten. Returns where."""
    from ktrdr_collect.storage.csv_store import HEADER as BARS_HEADER
    from ktrdr_collect.storage.csv_store import format_row

    tag = "" if store.format == "csv" else f".{store.format}"
    stamp = format_ts(when).replace("-", "").replace(":", "")
    base = series.meta_path(store.root, provider, timeframe, symbol, f"{tag}.{KEPT_TAG}-{stamp}")
    files.make_dirs(base.parent, files.DATA_DIR_MODE, store.root)
    target, n = base.with_name(base.name + ".csv"), 1
    while target.exists() or files.is_symlink(target):
        target, n = base.with_name(f"{base.name}.{n}.csv"), n + 1
    text = BARS_HEADER + "".join(map(format_row, bars))
    files.atomic_write(target, text.encode("utf-8"), mode=files.DATA_FILE_MODE, durable=True)
    return target


def prune_copies(root: Path, older_than_s: float, now: float) -> list[Path]:
    """Remove kept pre-restatement copies (`.ktrdr/*.before-restatement-*.csv`) last written more
    than `older_than_s` ago, anywhere under the data folder `root`; links are left alone. The
    removed paths."""
    removed = []
    for copy in root.glob(f"*/*/.ktrdr/*.{KEPT_TAG}-*.csv"):
        try:
            st = copy.lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and now - st.st_mtime > older_than_s:
            with contextlib.suppress(FileNotFoundError):
                copy.unlink()
                removed.append(copy)
    return removed
