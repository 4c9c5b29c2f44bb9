"""Hostile and absurd inputs (issue 15): refused before any job exists with one `Error:` line and
exit 1, never a raw OverflowError/IntegrityError/UnicodeDecodeError/RecursionError; damaged
caches (a coverage record that is not UTF-8, an index that is a directory) read as "rebuild"."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ktrdr_collect.cli.main import app
from ktrdr_collect.errors import InvalidInputError, ProviderUnavailableError
from ktrdr_collect.inputs import parse_age, resolve_window
from ktrdr_collect.providers.base import OptionSpec, _convert
from ktrdr_collect.providers.binance import BinanceProvider
from ktrdr_collect.providers.demo import DemoProvider
from ktrdr_collect.storage.csv_store import CsvStore

NOW = datetime(2024, 6, 1, tzinfo=UTC)
WINDOW = ["--start", "2023-01-02", "--end", "2023-02-01", "-o", "latency_ms=0"]
RAW = ("OverflowError", "IntegrityError", "UnicodeDecodeError", "RecursionError", "Traceback", "--debug")


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def jobs(home: Path) -> list[Path]:
    folder = home / "jobs"
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


def assert_one_error_line(r: Any, starts: str) -> None:
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {starts}"), r.stderr
    assert not any(word in r.stderr for word in RAW), r.stderr


# --- windows and ages -----------------------------------------------------------------------------


@pytest.mark.parametrize("start,end,days", [
    ("0001-01-01", None, None),
    ("1899-12-31", "2000-01-01", None),
    (None, "9999-12-31", None),
    ("2000-01-01", "2100-01-02", None),
    (None, None, 10**12),
    ("0001-01-01T00:00:00+05:00", None, None),
])
def test_windows_outside_sane_dates_are_refused(start: str | None, end: str | None, days: int | None) -> None:
    with pytest.raises(InvalidInputError, match="out of range|at most|cannot parse"):
        resolve_window(start, end, days, 365, NOW)


def test_the_bounds_themselves_are_accepted() -> None:
    start, end = resolve_window("1900-01-01", "2100-01-01", None, 365, NOW)
    assert start is not None and start.year == 1900 and end.year == 2100


def test_a_huge_default_days_from_config_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="out of range"):
        resolve_window(None, None, None, 10**9, NOW)


def test_ages_reaching_before_1900_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="before 1900"):
        parse_age("99999999999d", NOW)
    assert parse_age("7d", NOW).day == 25


@pytest.mark.parametrize("args,starts", [
    (["start", "AAPL", "--start", "0001-01-01", "--end", "2000-02-01"], "--start: 0001-01-01 is out of range"),
    (["start", "AAPL", "--days", "99999999999"], "--days must be positive"),
    (["start", "AAPL", "--days", "99999999999999999999999"], "--days must be positive"),
    (["start", "AAPL", "--end", "9999-12-31"], "--end: 9999-12-31 is out of range"),
    (["list", "--since", "99999999999d"], "WHEN"),
    (["list", "--until", "99999999999999999999w"], "WHEN"),
    (["stats", "--since", "99999999999d"], "WHEN"),
    (["list", "--limit", "99999999999999999999999"], "--limit must be between 0 and"),
    (["prune", "--older-than", "99999999999999999999999999999d"], "--older-than"),
    (["wait", "last", "--timeout", "nan"], "--timeout"),
])
def test_huge_values_are_one_error_line(home: Path, args: list[str], starts: str) -> None:
    assert_one_error_line(run(*args), starts)
    assert jobs(home) == []


# --- provider options -------------------------------------------------------------------------------


@pytest.mark.parametrize("args,starts", [
    (["-o", "latency_ms=inf"], "option latency_ms must be a finite number"),
    (["-o", "latency_ms=nan"], "option latency_ms must be a finite number"),
    (["-o", "latency_ms=-5"], "option latency_ms must be 0..600000"),
    (["-o", "jitter_ms=1e308"], "option jitter_ms must be 0..600000"),
    (["-o", "max_bars=99999999999999999999"], "option max_bars must be 1..1000000, got 99999999999999999999"),
    (["-p", "binance", "-o", "timeout_s=nan"], "option timeout_s must be a finite number"),
    (["-p", "binance", "-o", "timeout_s=0"], "option timeout_s must be > 0 and <= 3600"),
    (["-p", "binance", "-o", "rate_limit=1e-300"], "option rate_limit must be 0 (off) or 0.01..10000"),
    (["-p", "binance", "-o", "rate_limit=-1"], "option rate_limit must be 0 (off) or 0.01..10000"),
    (["-p", "yahoo", "-o", "timeout_s=inf"], "option timeout_s must be a finite number"),
])
def test_out_of_range_options_are_refused_before_a_job_exists(home: Path, args: list[str], starts: str) -> None:
    assert_one_error_line(run("start", "AAPL", *WINDOW[:4], *args), starts)
    assert jobs(home) == []


def test_out_of_range_options_in_the_config_are_refused_too(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "config.toml").write_text("[providers.demo]\nlatency_ms = inf\n")
    assert_one_error_line(run("start", "AAPL", *WINDOW[:4]), "option latency_ms must be a finite number")
    assert jobs(home) == []


def test_option_spec_bounds() -> None:
    rate = OptionSpec("rate_limit", float, 1.0, "", low=0.01, high=100, zero_off=True)
    assert _convert(rate, "0") == 0.0 and _convert(rate, 0) == 0.0 and _convert(rate, "0.01") == 0.01
    assert _convert(rate, 5) == 5.0 and isinstance(_convert(rate, 5), float)  # a TOML integer
    for bad in ("0.001", "-1", "101", "inf", "-inf", "nan", math.inf, math.nan):
        with pytest.raises(ProviderUnavailableError, match="rate_limit"):
            _convert(rate, bad)
    timeout = OptionSpec("timeout_s", float, 30.0, "", above=0, high=3600)
    assert _convert(timeout, "0.5") == 0.5
    with pytest.raises(ProviderUnavailableError, match=r"timeout_s must be > 0 and <= 3600, got 0"):
        _convert(timeout, "0")
    count = OptionSpec("max_bars", int, 10, "", low=1, high=1000)
    with pytest.raises(ProviderUnavailableError, match=r"max_bars must be 1\.\.1000, got 10000000000000000000000"):
        _convert(count, 10**22)


def test_providers_keep_sane_defaults_and_zero_means_no_pacing() -> None:
    assert BinanceProvider({"rate_limit": "0"}).rate_limit is None
    assert BinanceProvider({}).options["timeout_s"] == 30.0
    assert DemoProvider({"latency_ms": "0"}).options["latency_ms"] == 0.0


# --- config.toml ------------------------------------------------------------------------------------


@pytest.mark.parametrize("content,starts", [
    (b"\xff\xfe\x00binary\x80\x81", "config"),
    (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "config"),
    (b'data_dir = "/tmp/a\\u0000b"\n', "config"),
    (b"default_days = 99999999999999\n", "config"),
    (b"retention_days = 99999999999999\n", "config"),
])
def test_a_hostile_config_is_one_error_line(home: Path, content: bytes, starts: str) -> None:
    home.mkdir(parents=True)
    (home / "config.toml").write_bytes(content)
    assert_one_error_line(run("start", "AAPL", *WINDOW), starts)
    assert_one_error_line(run("config", "show"), starts)
    assert jobs(home) == []


# --- damaged caches ---------------------------------------------------------------------------------


def test_a_coverage_record_that_is_not_utf8_means_nothing_fetched(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    store.write("demo", "1d", "AAPL", [(86400, 1.0, 2.0, 0.5, 1.5, 10.0)], (0, 2 * 86400))
    record = store.coverage_path("demo", "1d", "AAPL")
    record.write_bytes(b"\xff\xfe{\x80 not utf-8")
    assert store.coverage("demo", "1d", "AAPL") == []
    record.write_text("[" * 100_000 + "]" * 100_000)  # nested beyond the JSON parser's depth
    assert store.coverage("demo", "1d", "AAPL") == []


def test_a_job_refetches_a_symbol_whose_coverage_is_not_utf8(home: Path) -> None:
    assert run("start", "AAPL", *WINDOW, "-q").exit_code == 0
    record = home / "data/demo/1d/.ktrdr/AAPL.coverage.json"
    record.write_bytes(b"\xff\xfe\x80garbage")
    r = run("start", "AAPL", *WINDOW, "--json")
    assert r.exit_code == 0, r.output  # today's code: the symbol fails, on every run
    final = json.loads(r.stdout.splitlines()[-1])
    assert final["symbols_completed"] == 1 and final["requests"] >= 1
    bars = CsvStore(home / "data").read("demo", "1d", "AAPL")
    assert len(bars) == len({b[0] for b in bars}) == 22  # stored again over what was there, once
    assert CsvStore(home / "data").coverage("demo", "1d", "AAPL") != []  # and recorded afresh


def test_an_index_that_is_a_directory_falls_back_to_the_folders(home: Path) -> None:
    assert run("config", "set", "retention_days", "0").exit_code == 0
    assert run("start", "AAPL", *WINDOW, "-q").exit_code == 0
    index = home / "jobs/index.sqlite"
    index.unlink(missing_ok=True)
    index.mkdir()
    (index / "keep").write_text("x")  # not empty: it cannot simply be removed
    listing = run("list", "--json")
    assert listing.exit_code == 0, listing.output
    assert len(json.loads(listing.stdout)) == 1
    warnings = listing.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("Warning: job history index"), listing.stderr
    for args in (["list"], ["stats", "--json"], ["status"], ["prune", "--older-than", "1d", "--dry-run"]):
        r = run(*args)
        assert r.exit_code == 0, (args, r.output)
    assert json.loads(run("stats", "--json").stdout)["jobs"] == 1
