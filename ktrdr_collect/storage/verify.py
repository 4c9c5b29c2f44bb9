"""`data verify`: a full read of one series, checked against the rules a stored series keeps.

Rules (the ``rule`` of each finding):

- ``unreadable``: a line or part that does not parse.
- ``order`` / ``duplicate``: timestamps not strictly ascending / the same timestamp twice.
- ``ohlc``: low <= open, close <= high; volume >= 0; every value finite.
- ``session``: a bar at a time the symbol's calendar has no bar.
- ``hole``: bars the calendar expects inside a fetched range that the file lacks (one finding per
  run of consecutive missing bars).
- ``scale``: adjacent bars whose prices jump by about a split ratio (2, 3, 4, 5, 10, ... or the
  inverse) with no matching split stored in ``<FILE>.actions.csv``.
- ``coverage``: bars outside every fetched range (one finding per run).

At most ``MAX_PER_RULE`` findings per series and rule are listed, then one saying how many more.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ktrdr_collect.storage import series
from ktrdr_collect.storage.calendar import Calendar
from ktrdr_collect.storage.gaps import Interval
from ktrdr_collect.storage.inventory import SeriesKey, coverage_path, data_path, summarize
from ktrdr_collect.storage.series import Bar
from ktrdr_collect.storage.timeframes import format_ts, parse_ts

MAX_PER_RULE = 20
SPLIT_RATIOS = (2.0, 3.0, 4.0, 5.0, 8.0, 10.0, 20.0, 50.0, 100.0)
"""Jumps that look like a split (or, inverted, a reverse split)."""
SPLIT_TOLERANCE = 0.08
"""How far (relative) a jump may be from a ratio and still count as one: a day's own move on top."""
ACTIONS_SUFFIX = ".actions.csv"


@dataclass(frozen=True)
class Finding:
    key: SeriesKey
    ts: int | None
    rule: str
    detail: str

    def line(self) -> str:
        when = format_ts(self.ts) if self.ts is not None else "-"
        return f"{self.key.label()}  {when}  {self.rule}: {self.detail}"

    def to_json(self) -> dict[str, object]:
        return {"provider": self.key.provider, "timeframe": self.key.timeframe, "symbol": self.key.symbol,
                "format": self.key.format, "timestamp": format_ts(self.ts) if self.ts is not None else None,
                "rule": self.rule, "detail": self.detail}


# --- reading ------------------------------------------------------------------------------------


def stored_bars(root: Path, key: SeriesKey) -> list[Bar]:
    """Every bar as stored, in stored order (not sorted, duplicates kept). ValueError if a line
    does not parse."""
    path = data_path(root, key)
    if key.format == "csv":
        from ktrdr_collect.storage.csv_store import parse_lines

        try:
            with open(path, encoding="utf-8", newline="") as f:
                return parse_lines(iter(f), None, None)
        except FileNotFoundError:
            return []
        except UnicodeDecodeError as e:
            raise ValueError(f"not UTF-8 text: {e}") from None
    from ktrdr_collect.storage.parquet_store import raw_bars

    return raw_bars(path)


def parse_ratio(text: str) -> float | None:
    """``10``, ``10:1``, ``10/1``, ``0.1`` -> the price divisor (new shares per old share)."""
    text = text.strip()
    for sep in (":", "/"):
        if sep in text:
            a, _, b = text.partition(sep)
            try:
                return float(a) / float(b)
            except (ValueError, ZeroDivisionError):
                return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 0 and math.isfinite(value) else None


def stored_splits(path: Path) -> list[tuple[int, float]]:
    """``(timestamp, ratio)`` of the splits in ``<FILE>.actions.csv`` (header ``timestamp,type,value``);
    none when there is no such file."""
    actions = path.with_name(path.name.removesuffix(path.suffix) + ACTIONS_SUFFIX)
    try:
        with open(actions, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (FileNotFoundError, UnicodeDecodeError, csv.Error):
        return []
    splits = []
    for row in rows:
        if (row.get("type") or "").strip().lower() not in ("split", "splits"):
            continue
        try:
            ts = parse_ts((row.get("timestamp") or "").strip())
        except ValueError:
            continue
        ratio = parse_ratio(row.get("value") or "")
        if ratio is not None:
            splits.append((ts, ratio))
    return splits


# --- the rules ----------------------------------------------------------------------------------


def order_findings(key: SeriesKey, bars: Sequence[Bar]) -> Iterator[Finding]:
    seen: set[int] = set()
    previous: int | None = None
    for bar in bars:
        ts = bar[0]
        if ts in seen:
            yield Finding(key, ts, "duplicate", "timestamp stored twice")
        elif previous is not None and ts < previous:
            yield Finding(key, ts, "order", f"comes after {format_ts(previous)}")
        seen.add(ts)
        previous = ts


def ohlc_problem(bar: Bar) -> str | None:
    _, o, h, low, c, v = bar
    if not all(math.isfinite(x) for x in bar[1:]):
        return "a value is not finite"
    if not (low <= o <= h and low <= c <= h):
        return f"open {o:g} high {h:g} low {low:g} close {c:g} (needs low <= open, close <= high)"
    if v < 0:
        return f"volume {v:g} < 0"
    return None


def ohlc_findings(key: SeriesKey, bars: Sequence[Bar]) -> Iterator[Finding]:
    for bar in bars:
        problem = ohlc_problem(bar)
        if problem:
            yield Finding(key, bar[0], "ohlc", problem)


def runs(times: Sequence[int], sequence: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """``(first, last, n)`` runs of ``times`` that are consecutive in ``sequence`` (both sorted)."""
    index = {ts: i for i, ts in enumerate(sequence)}
    start = prev = None
    n = 0
    for ts in times:
        i = index.get(ts)
        if start is not None and i is not None and prev is not None and i == index.get(prev, -2) + 1:
            prev, n = ts, n + 1
            continue
        if start is not None and prev is not None:
            yield start, prev, n
        start, prev, n = ts, ts, 1
    if start is not None and prev is not None:
        yield start, prev, n


def session_findings(key: SeriesKey, bars: Sequence[Bar], calendar: Calendar) -> Iterator[Finding]:
    if not bars:
        return
    times = sorted({bar[0] for bar in bars})
    expected = set(calendar.bar_times(key.timeframe, times[0], times[-1] + 1))
    for ts in times:
        if ts not in expected:
            yield Finding(key, ts, "session", "no bar expected at this time in the symbol's sessions")


def hole_findings(key: SeriesKey, bars: Sequence[Bar], ranges: Sequence[Interval],
                  calendar: Calendar) -> Iterator[Finding]:
    have = {bar[0] for bar in bars}
    for lo, hi in ranges:
        expected = list(calendar.bar_times(key.timeframe, lo, hi))
        missing = [ts for ts in expected if ts not in have]
        for first, last, n in runs(missing, expected):
            what = f"{n} bar{'s' if n != 1 else ''} missing" + (f" through {format_ts(last)}" if n > 1 else "")
            yield Finding(key, first, "hole", f"{what} inside a fetched range")


def coverage_findings(key: SeriesKey, bars: Sequence[Bar], ranges: Sequence[Interval]) -> Iterator[Finding]:
    times = sorted({bar[0] for bar in bars})
    outside = [ts for ts in times if not any(lo <= ts < hi for lo, hi in ranges)]
    for first, last, n in runs(outside, times):
        what = f"{n} bar{'s' if n != 1 else ''}" + (f" through {format_ts(last)}" if n > 1 else "")
        yield Finding(key, first, "coverage", f"{what} outside every fetched range")


def split_like(ratio: float) -> float | None:
    """The split ratio (> 1 for a split, < 1 for a reverse split) ``ratio`` is close to, or None."""
    if not (ratio > 0 and math.isfinite(ratio)):
        return None
    for k in SPLIT_RATIOS:
        for target in (k, 1 / k):
            if abs(ratio / target - 1) <= SPLIT_TOLERANCE:
                return target
    return None


def scale_findings(key: SeriesKey, bars: Sequence[Bar], splits: Sequence[tuple[int, float]]) -> Iterator[Finding]:
    """Jumps from one bar's close to the next bar's open near a split ratio, unexplained by a
    stored split dated after the first bar and at or before the second."""
    for prev, bar in zip(bars, bars[1:], strict=False):
        if prev[4] <= 0 or bar[1] <= 0:
            continue
        jump = prev[4] / bar[1]
        target = split_like(jump)
        if target is None:
            continue
        explained = any(prev[0] < ts <= bar[0] and abs(r / target - 1) <= 2 * SPLIT_TOLERANCE for ts, r in splits)
        if not explained:
            label = f"{target:g}:1" if target >= 1 else f"1:{1 / target:g}"
            yield Finding(key, bar[0], "scale",
                          f"price jumps {prev[4]:g} -> {bar[1]:g} (about {label}) with no stored split")


# --- one series ---------------------------------------------------------------------------------


def capped(findings: Iterator[Finding], key: SeriesKey, rule: str) -> list[Finding]:
    out: list[Finding] = []
    more = 0
    for finding in findings:
        if len(out) < MAX_PER_RULE:
            out.append(finding)
        else:
            more += 1
    if more:
        out.append(Finding(key, None, rule, f"... and {more} more"))
    return out


def verify_series(root: Path, key: SeriesKey, calendar: Calendar | None) -> list[Finding]:
    """Every finding for one series (empty: clean)."""
    try:
        bars = stored_bars(root, key)
    except (ValueError, OSError) as e:
        return [Finding(key, None, "unreadable", str(e))]
    recorded = series.read_coverage_file(coverage_path(root, key))
    if recorded is None:
        first, last, _, _ = summarize(root, key)
        recorded = series.derived_coverage(None, first, last)
    ranked = sorted({bar[0]: bar for bar in bars}.values())
    splits = stored_splits(data_path(root, key))
    checks: list[tuple[str, Iterator[Finding]]] = [
        ("order", order_findings(key, bars)),
        ("ohlc", ohlc_findings(key, bars)),
        ("coverage", coverage_findings(key, bars, recorded)),
        ("scale", scale_findings(key, ranked, splits)),
    ]
    if calendar is not None:
        checks += [("session", session_findings(key, bars, calendar)),
                   ("hole", hole_findings(key, bars, recorded, calendar))]
    findings: list[Finding] = []
    for rule, found in checks:
        findings += capped(found, key, rule)
    return findings
