"""The typed columnar decoder makes of a klines answer exactly what the row-by-row parser does."""

from __future__ import annotations

import json
import random

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
