import random
import time
from datetime import UTC, datetime

import pytest

from ktrdr_collect.storage.timeframes import TIMEFRAMES, format_ts, parse_ts, timeframe_seconds


def test_timeframe_seconds() -> None:
    expected = [60, 300, 900, 1800, 3600, 14400, 86400, 604800]
    assert [timeframe_seconds(tf) for tf in TIMEFRAMES] == expected


@pytest.mark.parametrize("bad", ["", "2m", "1M", "1D", "week"])
def test_unknown_timeframe_raises(bad: str) -> None:
    with pytest.raises(ValueError):
        timeframe_seconds(bad)


def test_format_ts_fixed_width() -> None:
    assert format_ts(1704205800) == "2024-01-02T14:30:00Z"
    assert format_ts(0) == "1970-01-01T00:00:00Z"
    assert format_ts(946857600 - 1) == "2000-01-02T23:59:59Z"


def test_format_and_parse_agree_with_datetime() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        ts = rng.randrange(0, 4_102_444_800)  # up to 2100
        text = format_ts(ts)
        assert text == datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert parse_ts(text) == ts


def test_parse_variants() -> None:
    assert parse_ts("2024-01-02T14:30:00+00:00") == 1704205800
    assert parse_ts("2024-01-02") == 1704153600
    assert parse_ts("2024-01-02T15:30:00+01:00") == 1704205800


@pytest.mark.parametrize(
    "bad", ["", "x", "2024-13-01", "2024-02-30T00:00:00Z", "2024-01-02T24:00:00Z", "2024-01-02T14:30:00.5Z"]
)
def test_parse_invalid_raises(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_ts(bad)


def test_conversions_are_fast() -> None:
    stamps = range(1_700_000_000, 1_700_000_000 + 100_000 * 60, 60)
    began = time.perf_counter()
    texts = [format_ts(ts) for ts in stamps]
    assert [parse_ts(t) for t in texts] == list(stamps)
    assert time.perf_counter() - began < 2.0  # ~0.3 s expected; generous for slow CI machines
