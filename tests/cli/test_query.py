"""`collect data query`: one DuckDB view over every stored series, CSV and Parquet alike."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ktrdr_collect.cli.main import app

pytest.importorskip("duckdb")
runner = CliRunner()
WINDOW = ["--start", "2023-01-02", "--end", "2023-02-01", "-o", "latency_ms=0", "-q"]


def test_query_agrees_with_data_list_over_csv_and_parquet(home: Path) -> None:
    assert runner.invoke(app, ["start", "AAPL", "MSFT", *WINDOW]).exit_code == 0
    assert runner.invoke(app, ["start", "IBM", "-t", "1h", "--format", "parquet", *WINDOW]).exit_code == 0
    r = runner.invoke(app, ["data", "query", "select provider, timeframe, symbol, count(*) as n from bars "
                                             "group by all order by symbol", "--json"])
    assert r.exit_code == 0, r.output
    counted = {(x["provider"], x["timeframe"], x["symbol"]): x["n"] for x in json.loads(r.stdout)}
    listed = json.loads(runner.invoke(app, ["data", "list", "--json"]).stdout)
    assert counted == {(s["provider"], s["timeframe"], s["symbol"]): s["rows"] for s in listed}
    assert counted[("demo", "1h", "IBM")] == 154 and counted[("demo", "1d", "AAPL")] == 22
    first = json.loads(runner.invoke(app, ["data", "query", "select * from bars where symbol = 'AAPL' "
                                                             "order by timestamp limit 1", "--json"]).stdout)[0]
    stored = (home / "data/demo/1d/AAPL.csv").read_text().splitlines()[1].split(",")
    assert first["timestamp"] == stored[0] and [first[k] for k in ("open", "high", "low", "close", "volume")] == [
        float(v) for v in stored[1:]]
    text = runner.invoke(app, ["data", "query", "select symbol, min(timestamp) as t from bars group by 1 order by 1",
                               "--csv"]).stdout
    assert list(csv.reader(io.StringIO(text)))[:2] == [["symbol", "t"], ["AAPL", "2023-01-02T00:00:00Z"]]


def test_a_bad_query_is_one_error_line_and_no_data_is_an_empty_view(home: Path) -> None:
    r = runner.invoke(app, ["data", "query", "select nope from bars"])
    assert r.exit_code == 1 and r.stderr.startswith("Error: query failed:") and len(r.stderr.splitlines()) == 1
    r = runner.invoke(app, ["data", "query", "select count(*) as n from bars", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == [{"n": 0}]
