"""End to end: `collect start` in its output modes, the stored files, status/list/watch."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from e2e_helpers import (
    CONTRACT_KEYS,
    FINISHED,
    JOB_ID_RE,
    SYMBOL_KEYS,
    UNFINISHED,
    YEAR_WINDOW,
    check_csv,
    collect,
    data_dir,
    demo_1h_bars,
    job_folders,
    lines_of,
    poll_until,
    popen,
    read_state,
    runner_gone,
    start_detached,
    status_json,
    to_ts,
    wait_for_requests,
    wait_rc,
)

from ktrdr_collect.jobs.lock import is_locked


def test_foundation_stores_exact_calendar_and_second_run_is_up_to_date(home: Path) -> None:
    args = ["start", "AAPL", "MSFT", "-t", "1h", "--days", "90", "-o", "latency_ms=20"]
    t0 = int(time.time())
    r = collect(home, *args)
    t1 = int(time.time())
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\r" not in r.stdout
    st = status_json(home, "last")
    assert st["status"] == "completed" and st["requests"] > 0
    start, end = to_ts(st["start"]), to_ts(st["end"])
    assert 89 * 86400 < end - start <= 90 * 86400 + 1
    # Bars still forming when the runner looked are excluded; the runner looked between t0 and t1.
    surely = set(demo_1h_bars(start, min(end, t0 - 3600)))
    at_most = set(demo_1h_bars(start, min(end, t1 - 3600 + 1)))
    assert len(surely) > 400
    rows = 0
    for sym in ("AAPL", "MSFT"):
        stamps = check_csv(data_dir(home) / f"{sym}.csv")
        assert surely <= set(stamps) <= at_most, sym
        assert all(time.gmtime(ts).tm_wday < 5 for ts in stamps)
        assert {time.strftime("%H:%M", time.gmtime(ts)) for ts in stamps} == {
            f"{h}:30" for h in range(14, 21)
        }
        rows += len(stamps)
    assert st["candles"] == rows

    # Again: nothing to fetch. (If a bar completed between the runs, one more run must fetch nothing.)
    for attempt in range(2):
        again = collect(home, *args)
        t2 = int(time.time())
        assert again.returncode == 0, again.stderr
        st2 = status_json(home, "last")
        assert st2["id"] != st["id"] and st2["status"] == "completed"
        crossed = bool(demo_1h_bars(t1 - 3600, t2 - 3600 + 1))
        if st2["requests"] == 0 or not crossed or attempt == 1:
            break
        t1 = t2
    assert st2["requests"] == 0
    assert st2["candles"] == 0
    assert "up to date" in again.stdout


def test_failed_symbol_exit_3_and_reported(home: Path) -> None:
    r = collect(home, "start", "OK1", "BAD", *YEAR_WINDOW, "-o", "fail_symbols=BAD", "-o", "latency_ms=0")
    assert r.returncode == 3, (r.stdout, r.stderr)
    bad_lines = [line for line in lines_of(r.stdout) if line.startswith("BAD")]
    assert len(bad_lines) == 1 and "failed" in bad_lines[0] and "unknown symbol" in bad_lines[0]
    assert check_csv(data_dir(home) / "OK1.csv")
    assert not (data_dir(home) / "BAD.csv").exists()
    show = collect(home, "show", "last", "--json")
    assert show.returncode == 0
    st = json.loads(show.stdout)
    by = {e["symbol"]: e for e in st["symbols"]}
    assert by["OK1"]["status"] == "completed" and by["OK1"]["error"] is None
    assert by["BAD"]["status"] == "failed" and "unknown symbol" in by["BAD"]["error"]
    assert st["status"] == "completed" and st["symbols_failed"] == 1 and st["symbols_completed"] == 1
    # The human table names the reason too.
    text = collect(home, "show", "last")
    assert text.returncode == 0 and "unknown symbol" in text.stdout
    assert collect(home, "wait", "last").returncode == 3


def test_status_json_has_every_key_and_consistent_values(home: Path) -> None:
    symbols = ["AAA", "BBB", "CCC", "NOPE"]
    r = collect(home, "start", *symbols, *YEAR_WINDOW, "-o", "max_bars=300", "-o", "latency_ms=0",
                "-o", "fail_symbols=NOPE", "--name", "consistency")
    assert r.returncode == 3, r.stderr
    st = status_json(home, "last")
    assert set(st) >= CONTRACT_KEYS, CONTRACT_KEYS - set(st)
    assert st["schema"] == 1 and st["name"] == "consistency" and st["provider"] == "demo"
    assert st["timeframe"] == "1h" and st["status"] == "completed"
    assert st["start"].startswith("2022-01-01T00:00:00") and st["start"].endswith("Z")
    assert st["end"].startswith("2023-01-01T00:00:00") and st["end"].endswith("Z")
    assert [e["symbol"] for e in st["symbols"]] == symbols
    for e in st["symbols"]:
        assert set(e) >= SYMBOL_KEYS
    assert st["symbols_total"] == len(symbols)
    assert st["symbols_completed"] + st["symbols_failed"] == len(symbols)
    assert st["symbols_completed"] == sum(e["status"] == "completed" for e in st["symbols"]) == 3
    assert st["symbols_failed"] == sum(e["status"] == "failed" for e in st["symbols"]) == 1
    rows = 0
    for e in st["symbols"]:
        if e["status"] == "completed":
            n = len(check_csv(data_dir(home) / f"{e['symbol']}.csv"))
            assert e["candles"] == n
            assert e["segments_done"] == e["segments_total"] == 7  # ~1,820 bars / 300
            rows += n
    assert st["candles"] == sum(e["candles"] for e in st["symbols"]) == rows == 3 * 1820
    assert st["requests"] == 21
    assert st["percent"] == 100
    assert st["eta_s"] == 0
    assert st["current_symbols"] == []
    assert st["errors_count"] >= 1 and st["throttled"] == 0
    assert st["elapsed_s"] >= 0 and st["rate_symbols_per_s"] >= 0 and st["rate_candles_per_s"] >= 0
    for key in ("created_at", "started_at", "updated_at", "completed_at"):
        assert st[key] and st[key].endswith("Z"), key
    assert st["created_at"] <= st["started_at"] <= st["completed_at"]


@pytest.mark.parametrize(
    "args",
    [
        ["../x"],
        ["AAPL", "../x"],
        ["A..B"],
        ["AAPL", "--start", "2023-01-01", "--end", "2022-01-01"],
        ["AAPL", "--start", "2022-01-01", "--end", "2022-01-01"],
        ["AAPL", "--start", "2022-01-01", "--days", "5"],
        ["AAPL", "--start", "not-a-date"],
    ],
    ids=["dotdot", "dotdot-second", "double-dot", "reversed", "empty", "start-and-days", "bad-date"],
)
def test_bad_input_exits_1_without_creating_anything(home: Path, args: list[str]) -> None:
    r = collect(home, "start", *args, "-t", "1h")
    assert r.returncode == 1, (r.stdout, r.stderr)
    err = lines_of(r.stderr)
    assert len(err) == 1 and err[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    if "x" in args[-1] or ".." in args[0]:
        assert "invalid symbol" in err[0]
    assert job_folders(home) == []
    assert not (home / "data").exists() or not list((home / "data").rglob("*.csv"))


def test_json_mode_is_ndjson_with_symbol_and_finished_events(home: Path) -> None:
    symbols = ["AAPL", "MSFT", "GOOG"]
    r = collect(home, "start", *symbols, *YEAR_WINDOW, "-o", "latency_ms=20", "-o", "max_bars=300",
                "-w", "2", "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "finished" and kinds.count("finished") == 1
    progress = [e for e in events if e["event"] == "progress"]
    assert progress
    for e in (*progress, events[-1]):
        assert set(e) >= CONTRACT_KEYS, CONTRACT_KEYS - set(e)
    per_symbol = [e["symbol"] for e in events if e["event"] == "symbol"]
    assert sorted(per_symbol) == sorted(symbols)
    last = events[-1]
    assert last["status"] == "completed" and last["percent"] == 100 and last["eta_s"] == 0
    assert last["candles"] == 3 * 1820
    assert kinds.index("finished") > max(i for i, k in enumerate(kinds) if k == "symbol")


def test_quiet_prints_nothing(home: Path) -> None:
    r = collect(home, "start", "AAPL", "MSFT", *YEAR_WINDOW, "-o", "latency_ms=0", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert status_json(home, "last")["status"] == "completed"
    assert len(check_csv(data_dir(home) / "MSFT.csv")) == 1820


def test_detach_returns_at_once_and_job_completes(home: Path) -> None:
    r = collect(home, "start", "AAPL", "MSFT", "IBM", "ORCL", *YEAR_WINDOW, "-o", "latency_ms=100",
                "-o", "max_bars=200", "-w", "2", "--detach")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    assert r.stdout == job_id + "\n" and JOB_ID_RE.match(job_id)
    folder = home / "jobs" / job_id
    # Returned before the job ended: its runner is alive and the job is not finished.
    assert is_locked(folder)
    assert read_state(home, job_id)["status"] in ("pending", "running")
    assert wait_rc(home, job_id) == 0
    st = status_json(home, job_id)
    assert st["status"] == "completed" and st["requests"] == 40
    for sym in ("AAPL", "MSFT", "IBM", "ORCL"):
        assert len(check_csv(data_dir(home) / f"{sym}.csv")) == 1820
    poll_until(lambda: runner_gone(home, job_id), 5, what="runner to exit")


def test_status_lists_unfinished_jobs_and_list_is_newest_first(home: Path) -> None:
    done = collect(home, "start", "DONE1", *YEAR_WINDOW, "-o", "latency_ms=0", "-q", "--name", "a_b")
    assert done.returncode == 0
    done_id = status_json(home, "last")["id"]
    running_id = start_detached(home, "RUN1", "RUN2", *YEAR_WINDOW, "-o", "latency_ms=100",
                                "-o", "max_bars=30", "-w", "1", "--name", "50% c")  # ~12 s: running throughout
    try:
        wait_for_requests(home, running_id)
        text = collect(home, "status")
        assert text.returncode == 0
        assert running_id in text.stdout and done_id not in text.stdout
        js = collect(home, "status", "--json")
        assert js.returncode == 0
        arr = json.loads(js.stdout)
        assert isinstance(arr, list)
        ids = [s["id"] for s in arr]
        assert running_id in ids and done_id not in ids
        assert all(s["status"] in UNFINISHED for s in arr)
        lst = collect(home, "list", "--json")
        assert lst.returncode == 0
        rows = json.loads(lst.stdout)
        assert [row["id"] for row in rows] == [running_id, done_id]
        assert all("symbols" not in row for row in rows)
        assert rows[0]["status"] in ("running", "pending") and rows[1]["status"] == "completed"
        assert rows[0]["created_at"] >= rows[1]["created_at"]
        # --search is one literal substring match for finished (index) and running (state) jobs alike
        for term, expected in (("_", [done_id]), ("%", [running_id]), ("a%b", []), ("0% C", [running_id])):
            found = collect(home, "list", "--json", "--search", term)
            assert [row["id"] for row in json.loads(found.stdout)] == expected, term
    finally:
        cancel = collect(home, "cancel", running_id)
    assert cancel.returncode == 0, cancel.stderr
    after = json.loads(collect(home, "status", "--json").stdout)
    assert after == []
    assert "No unfinished jobs" in collect(home, "status").stdout
    assert [row["status"] for row in json.loads(collect(home, "list", "--json").stdout)] == [
        "cancelled", "completed"]


def test_watch_prints_plain_progress_and_exits_with_job_code(home: Path) -> None:
    job_id = start_detached(home, "WA1", "WA2", "WBAD", *YEAR_WINDOW, "-o", "latency_ms=40",
                            "-o", "max_bars=300", "-o", "fail_symbols=WBAD", "-w", "2")
    r = collect(home, "watch", job_id, timeout=60)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "\x1b" not in r.stdout and "\r" not in r.stdout
    out = lines_of(r.stdout)
    assert job_id in out[0]
    assert any(line.startswith("WA1: completed") for line in out)
    assert any(line.startswith("WA2: completed") for line in out)
    assert any(line.startswith("WBAD: failed") for line in out)
    assert job_id in out[-1] and "Completed" in out[-1]
    st = status_json(home, job_id)
    assert st["status"] == "completed" and st["status"] in FINISHED


def test_watch_of_cancelled_job_exits_5(home: Path) -> None:
    job_id = start_detached(home, "WC1", "WC2", *YEAR_WINDOW, "-o", "latency_ms=100",
                            "-o", "max_bars=30", "-w", "1")  # ~12 s: still running when the cancel lands
    watcher = popen(home, "watch", job_id)
    try:
        wait_for_requests(home, job_id)
        assert collect(home, "cancel", job_id).returncode == 0
        out, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    assert watcher.returncode == 5, (out, err)
    assert "Cancelled" in lines_of(out)[-1]
