"""The typed columnar decoder makes of a klines answer exactly what the row-by-row parser does."""

from __future__ import annotations

import json
import random
import sys

import pytest

from ktrdr_collect.providers.base import TransientError
from ktrdr_collect.providers.binance import decode_klines, parse_klines
from ktrdr_collect.storage.columns import Columns


def _body(rng: random.Random, n: int) -> list[list]:
    rows = []
    for i in range(n):
        t = 1_499_040_000_000 + i * 60_000
        o = rng.choice(["0.01634790", "93000.00000000", "0.00000021", "1.10000000", "65432.10000000"])
        rows.append([t, o, o, o, o, f"{rng.random() * 1e6:.8f}", t + 59_999, "2434.19055334", 308,
                     "1756.87402397", "28.46694368", "0"])
    if rng.random() < 0.3:
        rng.shuffle(rows)
    return rows


@pytest.mark.parametrize("seed", range(10))
def test_decode_equals_parse(seed: int) -> None:
    rng = random.Random(seed)
    rows = _body(rng, rng.randint(0, 300))
    now_ms = rows[len(rows) // 2][6] + 1 if rows and rng.random() < 0.5 else 2**62  # a forming candle
    expected = parse_klines(json.loads(json.dumps(rows)), now_ms)
    got = decode_klines(json.dumps(rows).encode(), now_ms)
    assert isinstance(got, Columns) and got == expected


def test_rows_of_seven_fields_and_numbers_as_numbers_decode_too() -> None:
    raw = b'[[60000,"1.5",2,1,"1.25",10,119999],[120000,1,1,1,1,0,179999,"x"]]'
    assert decode_klines(raw, 2**62) == [(60, 1.5, 2.0, 1.0, 1.25, 10.0), (120, 1.0, 1.0, 1.0, 1.0, 0.0)]


@pytest.mark.parametrize("raw", [b'[[60000,"abc","1","1","1","1",119999]]', b'[[60000,"1"]]', b'{"a": 1}'])
def test_malformed_answers_fail_as_the_row_parser_says(raw: bytes) -> None:
    with pytest.raises(TransientError) as decoded:
        decode_klines(raw, 2**62)
    with pytest.raises(TransientError) as parsed:
        parse_klines(json.loads(raw), 2**62)
    assert str(decoded.value) == str(parsed.value)


def test_a_truncated_answer_is_a_transient_error() -> None:
    with pytest.raises(TransientError, match="malformed JSON"):
        decode_klines(b'[[60000,"1","1"', 2**62)


@pytest.mark.parametrize("seed", range(8))
def test_archive_columns_equal_the_row_parser(seed: int) -> None:
    """Archives: milliseconds before 2025 and microseconds after, a header or not, CRLF, rows out of
    order and repeated: the columns are parse_csv's bars (ascending, one per time, the last kept)."""
    from ktrdr_collect.engine.pipeline import clean_bars
    from ktrdr_collect.providers.binance_archive import parse_columns, parse_csv

    text = _archive_text(random.Random(seed))
    columns = parse_columns(text)
    assert isinstance(columns, Columns)
    assert columns == clean_bars(parse_csv(text), 0, 2**40)


def test_an_archive_row_that_is_not_numbers_fails_as_the_row_parser_says() -> None:
    from ktrdr_collect.providers.binance_archive import ArchiveUnavailable, parse_columns

    with pytest.raises(ArchiveUnavailable, match="malformed archive row 2"):
        parse_columns("1735689600000000,1,2,0.5,1.5,10\n1735693200000000,1,2,oops,1.5,10\n")


def _archive_text(rng: random.Random) -> str:
    lines = []
    for i in range(rng.randint(1, 200)):
        t = 1_735_689_600 + rng.randint(-3, 3) * 86_400 + rng.randrange(100) * 60
        stamp = t * 1_000_000 if t >= 1_735_689_600 else t * 1000
        lines.append(f"{stamp},{rng.random():.8f},{rng.random() + 1:.8f},0.5,{rng.random():.5f},{i * 1.5},"
                     f"{stamp + 59},1.0,3,0.5,0.25,0")
    text = "\r\n".join(lines) if rng.random() < 0.3 else "\n".join(lines)
    return ("open_time,open,high,low,close,volume,close_time,q,n,tb,tq,ignore\n" + text) if rng.random() < 0.3 else text


def test_clean_bars_while_another_thread_is_importing_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A module another thread is still importing is in sys.modules without its classes yet: rows
    are checked as rows, not refused with an AttributeError."""
    import types

    from ktrdr_collect.engine.pipeline import clean_bars

    partial = types.ModuleType("ktrdr_collect.storage.columns")
    monkeypatch.setitem(sys.modules, "ktrdr_collect.storage.columns", partial)
    rows = [(120, 1.0, 2.0, 0.5, 1.5, 3.0), (60, 1.0, 2.0, 0.5, 1.5, 3.0)]
    assert list(clean_bars(rows, 0, 1000)) == sorted(rows)
