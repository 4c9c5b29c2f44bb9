"""storage.verify: each rule finds what it is about, and a clean series has no finding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ktrdr_collect.storage import verify
from ktrdr_collect.storage.calendar import DEMO_CALENDAR
from ktrdr_collect.storage.csv_store import HEADER, format_row
from ktrdr_collect.storage.inventory import SeriesKey
from ktrdr_collect.storage.open import open_store
from ktrdr_collect.storage.timeframes import DAY, format_ts, parse_ts

MON = parse_ts("2024-01-01T00:00:00Z")
END = MON + 28 * DAY
KEY = SeriesKey("demo", "1d", "AAPL", "csv")
Bar = tuple[int, float, float, float, float, float]


def clean_bars(price: float = 100.0) -> list[Bar]:
    return [(ts, price, price * 1.01, price * 0.99, price, 1000.0) for ts in DEMO_CALENDAR.bar_times("1d", MON, END)]


def write_csv(root: Path, bars: list[Bar], ranges: list[tuple[int, int]] | None = None) -> None:
    """The file as given (any order), with a coverage record."""
    folder = root / "demo" / "1d"
    (folder / ".ktrdr").mkdir(parents=True, exist_ok=True)
    (folder / "AAPL.csv").write_text(HEADER + "".join(map(format_row, bars)))
    ranges = ranges if ranges is not None else [(MON, END)]
    record = {"version": 1, "ranges": [list(r) for r in ranges]}
    (folder / ".ktrdr" / "AAPL.coverage.json").write_text(json.dumps(record))


def rules(root: Path, key: SeriesKey = KEY) -> list[tuple[str, str]]:
    return [(f.rule, format_ts(f.ts) if f.ts else "-") for f in verify.verify_series(root, key, DEMO_CALENDAR)]


def test_a_clean_series_has_no_finding(tmp_path: Path) -> None:
    write_csv(tmp_path, clean_bars())
    assert rules(tmp_path) == []


def test_order_and_duplicates(tmp_path: Path) -> None:
    bars = clean_bars()
    write_csv(tmp_path, [bars[0], bars[2], bars[1], bars[1], *bars[3:]])
    found = rules(tmp_path)
    assert ("order", format_ts(bars[1][0])) in found and ("duplicate", format_ts(bars[1][0])) in found


def test_ohlc_rules(tmp_path: Path) -> None:
    bars = clean_bars()
    bars[3] = (bars[3][0], 100.0, 99.0, 98.0, 100.0, 5.0)  # high below open
    bars[5] = (bars[5][0], 100.0, 101.0, 99.0, 100.0, -1.0)  # negative volume
    bars[7] = (bars[7][0], 100.0, float("nan"), 99.0, 100.0, 1.0)
    write_csv(tmp_path, bars)
    assert sorted(rules(tmp_path)) == sorted([("ohlc", format_ts(bars[i][0])) for i in (3, 5, 7)])


def test_sessions_holes_and_coverage(tmp_path: Path) -> None:
    bars = clean_bars()
    saturday = MON + 5 * DAY
    missing = bars[8:11]  # three weekdays in a row
    late = (END + 3 * DAY, 100.0, 101.0, 99.0, 100.0, 1.0)  # after the fetched range (a Thursday)
    write_csv(tmp_path, sorted([*bars[:8], *bars[11:], (saturday, 100.0, 101.0, 99.0, 100.0, 1.0), late]))
    found = verify.verify_series(tmp_path, KEY, DEMO_CALENDAR)
    by_rule = {f.rule: f for f in found}
    assert sorted(by_rule) == ["coverage", "hole", "session"]
    assert by_rule["session"].ts == saturday
    assert by_rule["hole"].ts == missing[0][0] and "3 bars missing" in by_rule["hole"].detail
    assert [f.ts for f in found if f.rule == "coverage"] == [late[0]]  # the Saturday is inside the range
    line = by_rule["hole"].line()
    assert line.startswith("demo 1d AAPL  2024-01-11T00:00:00Z  hole: ")


def test_a_split_without_a_stored_action_is_a_scale_break(tmp_path: Path) -> None:
    bars = clean_bars(1000.0)[:10] + clean_bars(100.0)[10:]  # a 10:1 split on the 11th bar
    write_csv(tmp_path, bars)
    found = verify.verify_series(tmp_path, KEY, DEMO_CALENDAR)
    assert [(f.rule, f.ts) for f in found] == [("scale", bars[10][0])]
    assert "about 10:1" in found[0].detail
    actions = tmp_path / "demo" / "1d" / "AAPL.actions.csv"
    actions.write_text(f"timestamp,type,value\n{format_ts(bars[10][0])},split,10:1\n")
    assert verify.verify_series(tmp_path, KEY, DEMO_CALENDAR) == []
    actions.write_text(f"timestamp,type,value\n{format_ts(bars[10][0])},split,2\n")  # another ratio
    assert [f.rule for f in verify.verify_series(tmp_path, KEY, DEMO_CALENDAR)] == ["scale"]


def test_reverse_splits_and_ordinary_moves(tmp_path: Path) -> None:
    bars = clean_bars(10.0)[:5] + clean_bars(50.0)[5:]  # 1:5 reverse split
    write_csv(tmp_path, bars)
    assert [f.detail.split("(")[1] for f in verify.verify_series(tmp_path, KEY, DEMO_CALENDAR)] == \
        ["about 1:5) with no stored split"]
    moved = [(b[0], 100 + i, 102 + i, 99 + i, 101 + i, 1.0) for i, b in enumerate(clean_bars())]  # 1 % a day
    write_csv(tmp_path, moved)
    assert verify.verify_series(tmp_path, KEY, DEMO_CALENDAR) == []


def test_findings_per_rule_are_capped(tmp_path: Path) -> None:
    times = DEMO_CALENDAR.bar_times("1d", MON, MON + 56 * DAY)
    bars = [(ts, 100.0, 90.0, 99.0, 100.0, 1.0) for ts in times]  # every bar inconsistent
    write_csv(tmp_path, bars, [(MON, MON + 56 * DAY)])
    found = verify.verify_series(tmp_path, KEY, DEMO_CALENDAR)
    assert len(found) == verify.MAX_PER_RULE + 1
    assert found[-1].detail == f"... and {len(bars) - verify.MAX_PER_RULE} more"


def test_an_unreadable_line(tmp_path: Path) -> None:
    write_csv(tmp_path, clean_bars())
    with open(tmp_path / "demo" / "1d" / "AAPL.csv", "a") as f:
        f.write("2024-02-01T00:00:00Z,1,2\n")
    assert [f.rule for f in verify.verify_series(tmp_path, KEY, DEMO_CALENDAR)] == ["unreadable"]


def test_parquet_overlapping_parts_are_duplicates(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from ktrdr_collect.storage import parquet_store

    store = open_store("parquet", tmp_path)
    bars = clean_bars()
    store.write("demo", "1d", "AAPL", bars, (MON, END))
    key = SeriesKey("demo", "1d", "AAPL", "parquet")
    assert verify.verify_series(tmp_path, key, DEMO_CALENDAR) == []
    folder = store.path("demo", "1d", "AAPL")  # a part put there by hand, overlapping the other
    extra = [*bars[-3:], (END + 2 * DAY, 100.0, 101.0, 99.0, 100.0, 1.0)]
    (folder / parquet_store.part_name(extra[0][0], extra[-1][0] + 1)).write_bytes(parquet_store.part_bytes(extra))
    assert {f.rule for f in verify.verify_series(tmp_path, key, DEMO_CALENDAR)} >= {"duplicate"}
