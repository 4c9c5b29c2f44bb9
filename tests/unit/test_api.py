import threading
from pathlib import Path

import pytest

import ktrdr_collect
from ktrdr_collect import CancellationToken, ProcessingCancelledException


def test_collect_returns_results_and_stores_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = ktrdr_collect.collect(["aapl", "BAD"], "1d", start="2023-01-02", end="2023-03-01",
                                    options={"latency_ms": 0, "fail_symbols": "BAD"}, data_dir=tmp_path)
    assert [(r.symbol, r.status, r.candles) for r in results] == [("AAPL", "completed", 42), ("BAD", "failed", 0)]
    assert (tmp_path / "demo/1d/AAPL.csv").exists()
    err = capsys.readouterr().err
    assert "collect (demo)" in err and "2/2" in err  # the tqdm bar reached the end
    again = ktrdr_collect.collect(["AAPL"], "1d", start="2023-01-02", end="2023-03-01",
                                  options={"latency_ms": 0}, data_dir=tmp_path, progress=False)
    assert again[0].requests == 0
    assert "collect (demo)" not in capsys.readouterr().err


def test_collect_rejects_bad_symbols(tmp_path: Path) -> None:
    from ktrdr_collect.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="invalid symbol"):
        ktrdr_collect.collect(["../etc"], data_dir=tmp_path, progress=False)


def test_collect_can_be_cancelled_from_another_thread(tmp_path: Path) -> None:
    token = CancellationToken()
    timer = threading.Timer(0.3, token.cancel)
    timer.start()
    with pytest.raises(ProcessingCancelledException) as info:
        ktrdr_collect.collect([f"S{i}" for i in range(200)], "1h", start="2020-01-01", end="2023-01-01",
                              options={"latency_ms": 20}, data_dir=tmp_path, workers=4, progress=False,
                              cancellation_token=token)
    timer.join()
    partial = info.value.partial_results
    assert 0 < len(partial) < 200
    for r in partial:  # every completed result matches its file
        if r.ok:
            rows = (tmp_path / "demo/1h" / f"{r.symbol}.csv").read_text().splitlines()
            assert len(rows) - 1 == r.candles
