from datetime import UTC, datetime

import pytest

from ktrdr_collect.errors import InvalidInputError
from ktrdr_collect.inputs import (
    normalize_symbol,
    parse_age,
    parse_options,
    parse_symbols,
    read_symbol_lines,
    resolve_window,
)

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("text,expected", [
    ("aapl", "AAPL"), ("BRK.B", "BRK.B"), ("^GSPC", "^GSPC"), ("ES=F", "ES=F"),
    ("btc/usdt", "BTC/USDT"), ("A" * 32, "A" * 32), ("1INCH", "1INCH"), ("X-Y_Z", "X-Y_Z"),
])
def test_valid_symbols_are_upper_cased(text: str, expected: str) -> None:
    assert normalize_symbol(text) == expected


@pytest.mark.parametrize("text", [
    "", "../x", "..", "a..b", "/etc", ".hidden", "-x", "A" * 33, "AA PL", "a\\b", "é", "a\nb", "x;rm",
    "_x", "=x",
])
def test_invalid_symbols_are_rejected(text: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid symbol"):
        normalize_symbol(text)


def test_parse_symbols_dedupes_keeping_order() -> None:
    assert parse_symbols(["msft", "AAPL", "MSFT", " aapl "]) == ["MSFT", "AAPL"]


def test_symbol_file_lines_skip_comments_and_blanks() -> None:
    text = "# watchlist\nAAPL\n\n  msft  # tech\n#BAD\n"
    assert read_symbol_lines(text) == ["AAPL", "msft"]


def test_window_default_is_last_n_days() -> None:
    start, end = resolve_window(None, None, None, 365, NOW)
    assert end == NOW and (end - start).days == 365


def test_window_days_and_explicit_dates() -> None:
    start, end = resolve_window(None, "2024-01-31", 30, 365, NOW)
    assert end == datetime(2024, 1, 31, tzinfo=UTC) and start == datetime(2024, 1, 1, tzinfo=UTC)
    start, end = resolve_window("2024-01-01T09:30:00-05:00", "2024-01-02", None, 365, NOW)
    assert start == datetime(2024, 1, 1, 14, 30, tzinfo=UTC)


def test_window_earliest_means_none() -> None:
    start, end = resolve_window("earliest", None, None, 365, NOW)
    assert start is None and end == NOW


@pytest.mark.parametrize("start,end,days,message", [
    ("2024-02-01", "2024-01-01", None, "must be after"),
    ("2024-01-01", "2024-01-01", None, "must be after"),
    ("2024-01-01", None, 5, "cannot be combined"),
    ("yesterday", None, None, "cannot parse"),
    (None, "2024-13-45", None, "cannot parse"),
    (None, None, 0, "positive"),
])
def test_bad_windows_are_rejected(start: str | None, end: str | None, days: int | None, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        resolve_window(start, end, days, 365, NOW)


def test_options_and_ages() -> None:
    assert parse_options(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(InvalidInputError):
        parse_options(["novalue"])
    assert parse_age("7d", NOW) == datetime(2024, 5, 25, 12, 0, tzinfo=UTC)
    assert parse_age("30m", NOW) == datetime(2024, 6, 1, 11, 30, tzinfo=UTC)
    assert parse_age("2024-05-01", NOW) == datetime(2024, 5, 1, tzinfo=UTC)
