"""The csv provider: importing archives in our layout, ktrdr's and plain daily files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ktrdr_collect.cli.main import app
from ktrdr_collect.engine.cancellation import CancellationToken
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.providers import csv_archive
from ktrdr_collect.providers.base import PermanentError, UnknownSymbolError
from ktrdr_collect.providers.csv_archive import CsvArchiveProvider
from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.timeframes import parse_ts

OURS = """timestamp,open,high,low,close,volume
2024-01-02T14:30:00Z,10,11,9,10.5,100
2024-01-02T15:30:00Z,10.5,12,10,11,200
2024-01-02T16:30:00Z,11,11.5,10.5,11.25,300
"""
PLAIN_DAILY = """date,open,high,low,close,volume
2024-01-02,1,2,0.5,1.5,10
2024-01-03,1.5,2.5,1,2,20

2024-01-04,2,3,1.5,2.5,30
"""
KTRDR_HOURLY = """Date,Open,High,Low,Close,Volume,Adj Close
2024-01-02 14:30:00+00:00,5,6,4,5.5,-1,5.5
2024-01-02 15:30:00+00:00,5.5,6.5,5,6,-1,6
"""
KTRDR_UNNAMED_INDEX = """,open,high,low,close,volume
2024-01-02T00:00:00Z,7,8,6,7.5,70
2024-01-03T00:00:00Z,7.5,8.5,7,8,80
"""
T = parse_ts


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def fetch_all(p: CsvArchiveProvider, symbol: str, tf: str) -> list[tuple]:  # type: ignore[type-arg]
    return p.fetch(symbol, tf, 0, 2_000_000_000, CancellationToken())


def test_our_own_layout(tmp_path: Path) -> None:
    write(tmp_path / "yahoo/1h/AAPL.csv", OURS)
    p = CsvArchiveProvider({"path": str(tmp_path)})
    bars = fetch_all(p, "AAPL", "1h")
    assert bars == [(T("2024-01-02T14:30:00Z"), 10.0, 11.0, 9.0, 10.5, 100.0),
                    (T("2024-01-02T15:30:00Z"), 10.5, 12.0, 10.0, 11.0, 200.0),
                    (T("2024-01-02T16:30:00Z"), 11.0, 11.5, 10.5, 11.25, 300.0)]
    window = p.fetch("AAPL", "1h", T("2024-01-02T15:30:00Z"), T("2024-01-02T16:30:00Z"), CancellationToken())
    assert [b[0] for b in window] == [T("2024-01-02T15:30:00Z")]
    assert p.head_timestamp("AAPL", "1h") == T("2024-01-02T14:30:00Z")


def test_our_files_at_the_top_of_the_folder_with_slash_symbols(tmp_path: Path) -> None:
    write(tmp_path / "BTC_USDT.csv", OURS)
    p = CsvArchiveProvider({"path": str(tmp_path)})
    assert len(fetch_all(p, "BTC/USDT", "1h")) == 3


def test_plain_daily_files(tmp_path: Path) -> None:
    write(tmp_path / "spy.csv", PLAIN_DAILY)  # names match case-insensitively
    p = CsvArchiveProvider({"path": str(tmp_path)})
    bars = fetch_all(p, "SPY", "1d")
    assert [b[0] for b in bars] == [T("2024-01-02"), T("2024-01-03"), T("2024-01-04")]
    assert bars[2] == (T("2024-01-04"), 2.0, 3.0, 1.5, 2.5, 30.0)
    with pytest.raises(PermanentError, match="spy.csv holds daily bars .*-t 1d"):
        fetch_all(CsvArchiveProvider({"path": str(tmp_path)}), "SPY", "1h")


def test_ktrdr_files(tmp_path: Path) -> None:
    write(tmp_path / "EURUSD_1h.csv", KTRDR_HOURLY)
    write(tmp_path / "EURUSD_1d.csv", KTRDR_UNNAMED_INDEX)
    p = CsvArchiveProvider({"path": str(tmp_path)})
    hourly = fetch_all(p, "EURUSD", "1h")
    assert hourly == [(T("2024-01-02T14:30:00Z"), 5.0, 6.0, 4.0, 5.5, 0.0),  # -1: no volume
                      (T("2024-01-02T15:30:00Z"), 5.5, 6.5, 5.0, 6.0, 0.0)]
    daily = fetch_all(p, "EURUSD", "1d")
    assert [b[:2] for b in daily] == [(T("2024-01-02"), 7.0), (T("2024-01-03"), 7.5)]


def test_layout_wins_over_ktrdr_which_wins_over_plain(tmp_path: Path) -> None:
    write(tmp_path / "X.csv", PLAIN_DAILY)
    write(tmp_path / "X_1d.csv", KTRDR_UNNAMED_INDEX)
    p = CsvArchiveProvider({"path": str(tmp_path)})
    assert p.locate("X", "1d").name == "X_1d.csv"
    write(tmp_path / "demo/1d/X.csv", OURS.replace("T14:30", "T00:00"))
    assert CsvArchiveProvider({"path": str(tmp_path)}).locate("X", "1d") == tmp_path / "demo/1d/X.csv"


def test_several_provider_folders_need_a_source(tmp_path: Path) -> None:
    write(tmp_path / "demo/1h/AAPL.csv", OURS)
    write(tmp_path / "yahoo/1h/AAPL.csv", OURS)
    with pytest.raises(PermanentError, match=r"several providers .*\(demo, yahoo\): choose one with -o source=NAME"):
        CsvArchiveProvider({"path": str(tmp_path)}).locate("AAPL", "1h")
    p = CsvArchiveProvider({"path": str(tmp_path), "source": "yahoo"})
    assert p.locate("AAPL", "1h") == tmp_path / "yahoo/1h/AAPL.csv"


def test_unknown_symbol(tmp_path: Path) -> None:
    write(tmp_path / "AAPL.csv", OURS)
    p = CsvArchiveProvider({"path": str(tmp_path)})
    p.validate("AAPL")
    expected = r"no CSV file for MSFT in .*<provider>/<tf>/MSFT.csv, MSFT_<tf>.csv and MSFT.csv"
    with pytest.raises(UnknownSymbolError, match=expected):
        p.validate("MSFT")
    with pytest.raises(UnknownSymbolError, match=r"looked for <provider>/1d/MSFT.csv, MSFT_1d.csv and MSFT.csv"):
        fetch_all(p, "MSFT", "1d")


@pytest.mark.parametrize(("row", "message"), [
    ("2024-01-03T14:30:00Z,10,9,11,10,1", "high < low"),
    ("2024-01-03T14:30:00Z,10,11,9,abc,1", "close is not a number: 'abc'"),
    ("2024-01-03T14:30:00Z,10,11,9,nan,1", "close is not a finite number: 'nan'"),
    ("yesterday,10,11,9,10,1", "unreadable time 'yesterday'"),
    ("2024-01-03T14:30:00Z,10,11", "expected at least 6 fields, got 3"),
    ("2024-01-02T14:30:00Z,99,99,99,99,1", "duplicate time 2024-01-02T14:30:00Z (also on line 2)"),
])
def test_malformed_rows_name_the_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    write(tmp_path / "AAPL.csv", OURS + row + "\n")
    p = CsvArchiveProvider({"path": str(tmp_path)})
    with pytest.raises(PermanentError) as info:
        fetch_all(p, "AAPL", "1h")
    assert str(info.value) == f"AAPL.csv line 5: {message}"


def test_a_header_without_prices_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "AAPL.csv", "timestamp,price\n2024-01-02T14:30:00Z,1\n")
    with pytest.raises(PermanentError, match="AAPL.csv line 1: header lacks open, high, low, close"):
        fetch_all(CsvArchiveProvider({"path": str(tmp_path)}), "AAPL", "1h")


def test_bars_finer_than_the_timeframe_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "AAPL.csv", OURS)
    with pytest.raises(PermanentError, match=r"AAPL.csv has bars 3600s apart .* finer than 1d"):
        fetch_all(CsvArchiveProvider({"path": str(tmp_path)}), "AAPL", "1d")


def test_daily_bars_at_a_local_open_pass_a_dst_change(tmp_path: Path) -> None:
    write(tmp_path / "AAPL.csv", "timestamp,open,high,low,close,volume\n"
          "2024-03-08T14:30:00Z,1,2,0.5,1,1\n2024-03-11T13:30:00Z,1,2,0.5,1,1\n2024-03-12T13:30:00Z,1,2,0.5,1,1\n")
    assert len(fetch_all(CsvArchiveProvider({"path": str(tmp_path)}), "AAPL", "1d")) == 3


def test_each_file_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "AAPL.csv", OURS)
    calls: list[Path] = []
    real = csv_archive.parse_file
    monkeypatch.setattr(csv_archive, "parse_file", lambda path: calls.append(path) or real(path))
    p = CsvArchiveProvider({"path": str(tmp_path)})
    for _ in range(3):
        fetch_all(p, "AAPL", "1h")
    p.head_timestamp("AAPL", "1h")
    assert calls == [tmp_path / "AAPL.csv"]


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ProviderUnavailableError, match="provider csv needs the archive folder: -o path=FOLDER"):
        CsvArchiveProvider({})
    with pytest.raises(ProviderUnavailableError, match="is not a folder"):
        CsvArchiveProvider({"path": str(tmp_path / "missing")})
    p = CsvArchiveProvider({"path": str(tmp_path / ".." / tmp_path.name)})
    assert p.public_options()["path"] == str(tmp_path.resolve())  # stored absolute for the runner
    assert p.rate_limit is None and not p.needs_network and not p.needs_credentials


def test_engine_import_job_then_nothing_to_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "archive"
    write(archive / "AAPL.csv", PLAIN_DAILY)
    write(archive / "MSFT_1d.csv", KTRDR_UNNAMED_INDEX)
    write(archive / "old/1d/SPY.csv", OURS.replace("T14:30", "T00:00").replace("2024-01-02T15", "2024-01-03T00")
          .replace("2024-01-02T16:30", "2024-01-04T00:00"))
    store = CsvStore(tmp_path / "data")
    p = CsvArchiveProvider({"path": str(archive)})
    results = ProcessingEngine(p, store, workers=3).process_batch(["AAPL", "MSFT", "SPY", "NOPE"], "1d",
                                                                  "2023-12-01", "2024-02-01")
    by = {r.symbol: r for r in results}
    assert [by[s].status for s in ("AAPL", "MSFT", "SPY")] == ["completed"] * 3
    assert by["NOPE"].status == "failed" and "no CSV file for NOPE" in (by["NOPE"].error or "")
    assert store.read("csv", "1d", "AAPL") == fetch_all(CsvArchiveProvider({"path": str(archive)}), "AAPL", "1d")
    assert [len(store.read("csv", "1d", s)) for s in ("AAPL", "MSFT", "SPY")] == [3, 2, 3]
    assert [by[s].requests for s in ("AAPL", "MSFT", "SPY")] == [1, 1, 1]  # one read per gap
    monkeypatch.setattr(csv_archive, "parse_file", lambda path: pytest.fail("read again"))
    again = ProcessingEngine(CsvArchiveProvider({"path": str(archive)}), store).process_batch(
        ["AAPL", "MSFT", "SPY"], "1d", "2023-12-01", "2024-02-01")
    assert [r.requests for r in again] == [0, 0, 0]


def test_cli_import_with_start_earliest(home: Path, tmp_path: Path) -> None:
    write(tmp_path / "archive/AAPL.csv", PLAIN_DAILY)
    r = CliRunner().invoke(app, ["start", "AAPL", "-p", "csv", "-o", f"path={tmp_path / 'archive'}",
                                 "--start", "earliest", "--end", "2024-02-01", "--json"])
    assert r.exit_code == 0, r.output
    final = json.loads(r.stdout.splitlines()[-1])
    assert final["status"] == "completed" and final["candles"] == 3
    assert (home / "data/csv/1d/AAPL.csv").read_text().splitlines()[1:] == [
        "2024-01-02T00:00:00Z,1,2,0.5,1.5,10", "2024-01-03T00:00:00Z,1.5,2.5,1,2,20",
        "2024-01-04T00:00:00Z,2,3,1.5,2.5,30"]


def test_cli_without_path_is_one_error_line(home: Path) -> None:
    r = CliRunner().invoke(app, ["start", "AAPL", "-p", "csv"])
    assert r.exit_code == 1
    assert r.stderr.strip() == "Error: provider csv needs the archive folder: -o path=FOLDER"


OLD_YAHOO_DAILY = """timestamp,open,high,low,close,volume
2024-07-01T13:30:00Z,1,2,0.5,1.5,10
2024-11-04T14:30:00Z,2,3,1.5,2.5,20
"""
SYDNEY_DAILY = """timestamp,open,high,low,close,volume
2024-07-01T00:00:00Z,1,2,0.5,1.5,10
2024-11-03T23:00:00Z,2,3,1.5,2.5,20
"""


def test_daily_bars_stamped_at_an_open_are_stored_at_their_session_date(tmp_path: Path) -> None:
    write(tmp_path / "yahoo" / "1d" / "AAPL.csv", OLD_YAHOO_DAILY)
    p = CsvArchiveProvider({"path": str(tmp_path), "tz": "America/New_York"})
    assert [b[0] for b in fetch_all(p, "AAPL", "1d")] == [T("2024-07-01"), T("2024-11-04")]
    write(tmp_path / "BHP.AX_1d.csv", SYDNEY_DAILY)  # 10:00 Sydney is the evening before in UTC
    p = CsvArchiveProvider({"path": str(tmp_path), "tz": "Australia/Sydney"})
    assert [b[0] for b in fetch_all(p, "BHP.AX", "1d")] == [T("2024-07-01"), T("2024-11-04")]
    assert fetch_all(p, "BHP.AX", "1d")[1][1:] == (2.0, 3.0, 1.5, 2.5, 20.0)


def test_two_daily_bars_on_one_date_are_refused_naming_the_time_zone(tmp_path: Path) -> None:
    write(tmp_path / "X_1d.csv", "timestamp,open,high,low,close,volume\n"
          "2024-07-01T00:30:00Z,1,2,0.5,1.5,10\n2024-07-01T23:45:00Z,1,2,0.5,1.5,10\n")
    with pytest.raises(PermanentError, match=r"two 1d bars fall on 2024-07-01 in UTC \(set -o tz="):
        fetch_all(CsvArchiveProvider({"path": str(tmp_path)}), "X", "1d")
    with pytest.raises(ProviderUnavailableError, match="unknown time zone 'Mars/Base'"):
        CsvArchiveProvider({"path": str(tmp_path), "tz": "Mars/Base"})
