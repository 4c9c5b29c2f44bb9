"""One symbol, one file (issue 15): the symbol -> file name mapping is injective, files written
before keep their names, and `BTC/USDT` and `BTC_USDT` land in two files with their own bars."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ktrdr_collect.cli.main import app
from ktrdr_collect.engine.cancellation import CancellationToken
from ktrdr_collect.errors import InvalidInputError
from ktrdr_collect.inputs import normalize_symbol
from ktrdr_collect.providers.csv_archive import CsvArchiveProvider
from ktrdr_collect.providers.demo import DemoProvider
from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.paths import file_stem, legacy_file_stem, symbol_of_stem
from ktrdr_collect.storage.timeframes import parse_ts

START, END = "2023-01-02", "2023-03-01"
WINDOW = ["--start", START, "--end", END, "-o", "latency_ms=0"]
SYMBOL_CHARS = "AB1._-^=/"


def run(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def demo_bars(symbol: str) -> list[tuple[int, float, float, float, float, float]]:
    return DemoProvider({"latency_ms": 0}).fetch(symbol, "1d", parse_ts(START), parse_ts(END), CancellationToken())


def test_slash_keeps_its_name_and_underscore_gets_its_own() -> None:
    assert file_stem("BTC/USDT") == "BTC_USDT"  # the contract's rule: existing files keep their names
    assert file_stem("BTC_USDT") == "BTC%5FUSDT"
    assert file_stem("btc_usdt") == file_stem("BTC_USDT")  # one symbol whatever its case
    assert file_stem("AAPL") == "AAPL" and file_stem("^GSPC") == "^GSPC" and file_stem("ES=F") == "ES=F"


def valid(text: str) -> str | None:
    try:
        return normalize_symbol(text)
    except InvalidInputError:
        return None


def some_symbols() -> set[str]:
    """Every valid symbol of 3 and 4 characters over an alphabet holding each special character,
    plus random longer ones (lower case included: they are the upper-case symbol)."""
    short = ("".join(chars) for n in (3, 4) for chars in itertools.product(SYMBOL_CHARS, repeat=n))
    rng = random.Random(15)
    alphabet = SYMBOL_CHARS + "ab"
    long = ("A" + "".join(rng.choice(alphabet) for _ in range(rng.randint(4, 31))) for _ in range(20000))
    return {s for s in map(valid, itertools.chain(short, long)) if s is not None}


def test_the_mapping_is_injective_and_reversible() -> None:
    symbols = some_symbols()
    stems: dict[str, str] = {}
    for symbol in symbols:
        stem = file_stem(symbol)
        assert stems.setdefault(stem, symbol) == symbol, f"{symbol} and {stems[stem]} share {stem}"
        assert symbol_of_stem(stem) == symbol
    assert {"A/_B", "A_/B", "A//B", "A__B", "A_B", "A/B"} <= symbols  # the colliding shapes are covered


def test_legacy_stem_is_the_old_rule() -> None:
    assert legacy_file_stem("BTC_USDT") == legacy_file_stem("BTC/USDT") == "BTC_USDT"


def test_two_symbols_in_one_job_land_in_two_files(home: Path) -> None:
    r = run("start", "BTC/USDT", "BTC_USDT", *WINDOW)
    assert r.exit_code == 0, r.output
    assert "BTC/USDT: completed, 42 candles" in r.stdout and "BTC_USDT: completed, 42 candles" in r.stdout
    folder = home / "data/demo/1d"
    assert sorted(p.name for p in folder.glob("*.csv")) == ["BTC%5FUSDT.csv", "BTC_USDT.csv"]
    store = CsvStore(home / "data")
    slash, underscore = store.read("demo", "1d", "BTC/USDT"), store.read("demo", "1d", "BTC_USDT")
    assert slash == demo_bars("BTC/USDT") and underscore == demo_bars("BTC_USDT")
    assert slash != underscore


def test_two_symbols_in_two_jobs_land_in_two_files(home: Path) -> None:
    assert run("start", "BTC/USDT", *WINDOW).exit_code == 0
    second = run("start", "btc_usdt", *WINDOW)  # today's code: "data already up to date", 0 candles
    assert second.exit_code == 0, second.output
    assert "BTC_USDT: completed, 42 candles" in second.stdout
    store = CsvStore(home / "data")
    assert store.read("demo", "1d", "BTC/USDT") == demo_bars("BTC/USDT")
    assert store.read("demo", "1d", "BTC_USDT") == demo_bars("BTC_USDT")
    assert store.coverage("demo", "1d", "BTC/USDT") != [] and store.coverage("demo", "1d", "BTC_USDT") != []
    assert (home / "data/demo/1d/.ktrdr/BTC%5FUSDT.coverage.json").exists()


OURS = "timestamp,open,high,low,close,volume\n2024-01-02T00:00:00Z,1,2,0.5,1.5,10\n"


def fetch_all(p: CsvArchiveProvider, symbol: str) -> list[tuple[int, float, float, float, float, float]]:
    return p.fetch(symbol, "1d", 0, parse_ts("2025-01-01"), CancellationToken())


@pytest.mark.parametrize("name", ["MY_SYM.csv", "MY%5FSYM.csv", "demo/1d/MY%5FSYM.csv", "MY_SYM_1d.csv"])
def test_csv_archives_find_a_symbol_with_an_underscore(tmp_path: Path, name: str) -> None:
    """Our new name, and the name older versions and other tools gave it (both `_`)."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OURS)
    assert len(fetch_all(CsvArchiveProvider({"path": str(tmp_path)}), "MY_SYM")) == 1
