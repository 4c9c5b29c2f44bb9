"""Half-open interval arithmetic on ``[start, end)`` epoch-second ranges."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Interval = tuple[int, int]


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sort, drop empty intervals, and merge overlapping or touching ones."""
    merged: list[Interval] = []
    for start, end in sorted((s, e) for s, e in intervals if s < e):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def subtract(window: Interval, covered: Sequence[Interval]) -> list[Interval]:
    """The parts of ``window`` not covered by any interval in ``covered``, ascending."""
    start, end = window
    gaps: list[Interval] = []
    cursor = start
    for c_start, c_end in merge_intervals(covered):
        if c_end <= cursor:
            continue
        if c_start >= end:
            break
        if c_start > cursor:
            gaps.append((cursor, c_start))
        cursor = max(cursor, c_end)
        if cursor >= end:
            break
    if cursor < end:
        gaps.append((cursor, end))
    return gaps
