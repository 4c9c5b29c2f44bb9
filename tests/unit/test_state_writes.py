"""Huge jobs (issue 15): what writing state.json costs the runner, and what reading it costs a sender.

A runner is built in-process over a job of 20,000 symbols, its tracker driven by hand and its
clocks injected (`runner.clock`, `runner.cpu_clock`): each tick is what the writer thread does when
it wakes (`publish_if_due`). Writes are counted at `runner.write_state`, the one seam every state
write of the runner goes through. Nothing sleeps and nothing is timed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ktrdr_collect import paths
from ktrdr_collect.engine.progress import ProgressTracker, SymbolProgress
from ktrdr_collect.errors import StateFileError
from ktrdr_collect.jobs import control, model, statefile
from ktrdr_collect.jobs import runner as runner_mod
from ktrdr_collect.jobs.folders import create_folder, publish_folder
from ktrdr_collect.jobs.launch import JobRequest, write_job
from ktrdr_collect.jobs.lock import JobLock
from ktrdr_collect.jobs.record import CONTRACT_KEYS
from ktrdr_collect.jobs.statefile import (
    encode,
    encode_state,
    read_head,
    read_head_raw,
    read_raw,
    read_state,
    write_state,
)

N = 20_000
TICK = runner_mod.MIN_WRITE_INTERVAL_S


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Writes:
    """Every state.json write of the runner: its size."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        real = runner_mod.write_state

        def counted(folder: Path, data: Any, durable: bool = False) -> None:
            self.sizes.append(len(data.payload) if isinstance(data, statefile.Encoded) else len(encode(data)))
            real(folder, data, durable=durable)

        monkeypatch.setattr(runner_mod, "write_state", counted)

    def clear(self) -> None:
        self.sizes.clear()


def make_job(n: int) -> str:
    end = datetime(2024, 1, 1, tzinfo=UTC)
    req = JobRequest(symbols=[f"S{i:06d}" for i in range(n)], timeframe="1d", start=datetime(2023, 12, 1, tzinfo=UTC),
                     end=end, provider="demo", options={"latency_ms": 0}, public_options={"latency_ms": 0},
                     data_dir=paths.default_data_dir())
    new = create_folder()
    write_job(new.staging, new.job_id, req, seq=new.seq)
    publish_folder(new)
    return new.job_id


@pytest.fixture
def job(home: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[runner_mod.Runner]:
    """A runner over a job of N symbols (or `@pytest.mark.parametrize("job", [n], indirect=True)`),
    started (state written once), with injected clocks; no engine thread runs."""
    n = getattr(request, "param", N)
    job_id = make_job(n)
    lock = JobLock(paths.job_dir(job_id))
    assert lock.try_acquire()
    runner = runner_mod.Runner(job_id, lock)
    clock = Clock()
    runner.clock = runner.cpu_clock = clock  # writes cost no CPU unless a test says so
    provider, _engine = runner.prepare()
    runner.begin()
    runner.clock_ = clock  # type: ignore[attr-defined]
    try:
        yield runner
    finally:
        provider.close()
        runner.journal.close()
        lock.release()


def work(tracker: ProgressTracker, symbol: str) -> None:
    """One symbol from start to completed: one segment of 5 bars."""
    tracker.symbol_started(symbol)
    tracker.planned(symbol, 1)
    tracker.request_made(symbol)
    tracker.segment_done(symbol, 5)
    tracker.symbol_finished(symbol, "completed")


def run_ticks(runner: runner_mod.Runner, ticks: int, per_tick: int = 2, first: int = 0) -> int:
    """`ticks` wake-ups of the writer, `per_tick` symbols finishing between each; the next symbol."""
    assert runner.tracker is not None
    clock = runner.clock_  # type: ignore[attr-defined]
    symbol = first
    for _ in range(ticks):
        for _ in range(per_tick):
            work(runner.tracker, f"S{symbol:06d}")
            symbol += 1
        clock.t += TICK
        runner.publish_if_due()
    return symbol


def test_a_huge_state_is_rewritten_within_a_byte_budget(
        job: runner_mod.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = Writes(monkeypatch)
    ticks = 400  # 30 s of the writer waking every 75 ms with something new each time
    run_ticks(job, ticks)
    size = (job.folder / "state.json").stat().st_size
    seconds = ticks * TICK
    assert size > 2_000_000  # 20,000 symbols: a state of ~3 MB
    assert writes.sizes, "a changing job must still be written"
    assert sum(writes.sizes) <= runner_mod.WRITE_BYTES_PER_S * seconds + size
    # the old runner wrote it on every wake-up: 400 writes, 1.4 GB for these 30 s
    assert len(writes.sizes) <= seconds * runner_mod.WRITE_BYTES_PER_S / size + 1


def test_what_a_write_costs_paces_the_next(job: runner_mod.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = job.clock_  # type: ignore[attr-defined]
    cpu = {"t": 0.0}

    def cpu_clock() -> float:  # every reading 10 ms later: a write costs 10 ms of CPU
        cpu["t"] += 0.010
        return cpu["t"]

    job.cpu_clock = cpu_clock
    monkeypatch.setattr(runner_mod, "WRITE_BYTES_PER_S", 10**12)  # only the CPU share paces here
    writes = Writes(monkeypatch)
    times: list[float] = []
    real = job._write

    def timed(durable: bool, overrides: dict[str, Any]) -> None:
        times.append(clock.t)
        real(durable, overrides)

    monkeypatch.setattr(job, "_write", timed)
    run_ticks(job, 100)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert writes.sizes and min(gaps) >= 0.010 / runner_mod.WRITE_CPU_SHARE - 1e-9


@pytest.mark.parametrize("job", [200], indirect=True)
def test_a_small_job_is_still_written_on_every_wake_up(job: runner_mod.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = Writes(monkeypatch)
    run_ticks(job, 50, per_tick=1)
    assert len(writes.sizes) == 50  # every 75 ms, as before: a change is visible within ~100 ms


def test_only_the_symbols_that_changed_are_encoded_again(
        job: runner_mod.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[Any] = []
    real = runner_mod.encode_entry
    monkeypatch.setattr(runner_mod, "encode_entry", lambda entry: encoded.append(entry) or real(entry))
    job.clock_.t += 100  # type: ignore[attr-defined]  # the start's write is long paid for
    done = run_ticks(job, 400)
    job.publish()
    assert len(encoded) <= done  # each finished symbol once (today: 20,000 per write)
    state = read_state(job.folder)
    assert [e.status for e in state.symbols[:done]] == ["completed"] * done


def test_the_file_holds_the_whole_snapshot_and_agrees_with_the_tracker(job: runner_mod.Runner) -> None:
    assert job.tracker is not None
    done = run_ticks(job, 30)
    job.tracker.symbol_started("S019999")
    job.tracker.planned("S019999", 4)
    job.tracker.request_made("S019999")
    job.tracker.segment_done("S019999", 5)
    job.tracker.symbol_finished("S000000", "failed", "boom")  # already completed: ignored
    job.publish()
    state = json.loads((job.folder / "state.json").read_bytes())
    assert set(state) >= set(CONTRACT_KEYS) and list(state)[-1] == "symbols"
    snap = job.tracker.snapshot()
    assert [e["symbol"] for e in state["symbols"]] == [f"S{i:06d}" for i in range(N)]
    assert state["symbols"] == [runner_mod.symbol_entry(sp, "1d").to_json() for sp in snap.symbols]
    assert state["symbols_total"] == N and state["symbols_completed"] == done == snap.completed
    assert state["percent"] == snap.percent and state["current_symbols"] == snap.current == ["S019999"]
    assert state["candles"] == snap.candles == 5 * done + 5
    head = read_head_raw(job.folder)
    assert head == {k: v for k, v in state.items() if k != "symbols"}


def test_a_command_is_acknowledged_in_the_file_after_one_poll_whatever_the_pacing(
        job: runner_mod.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    run_ticks(job, 3)
    writes = Writes(monkeypatch)
    assert not job.publish_if_due()  # a paced write would have to wait for seconds here
    sent = control.send(job.folder, "pause")
    job.control_step()  # one poll of the control channel
    head = read_head(job.folder)  # what a sender reads: the head, not 3 MB
    assert control.find_ack(head, sent) == {"id": sent, "cmd": "pause", "result": "paused"}
    assert head.status == model.PAUSED and len(writes.sizes) == 1
    on_disk = json.loads((job.folder / "state.json").read_bytes())
    assert on_disk["status"] == model.PAUSED and len(on_disk["symbols"]) == N


def test_a_status_change_is_written_at_once_not_paced(job: runner_mod.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    run_ticks(job, 3)
    writes = Writes(monkeypatch)
    assert not job.publish_if_due()
    job.apply("pause")  # as the control thread does, before it writes
    assert job.publish_if_due() and len(writes.sizes) == 1
    assert read_head(job.folder).status == model.PAUSED


def test_a_sender_reads_only_the_head(job: runner_mod.Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    def whole_file(folder: Path) -> dict[str, Any]:
        raise AssertionError("read the whole state file")

    monkeypatch.setattr(statefile, "read_raw", whole_file)
    head = read_head(job.folder)
    assert head.status == model.RUNNING and head.symbols_total == N and head.symbols == []


# -- the file format ---------------------------------------------------------------------------


def sample(n: int = 3) -> dict[str, Any]:
    return {"schema": 1, "id": "x", "status": "running", "name": "a \"quoted\"\nname", "zz": [1, {"a": 2}],
            "options": {"symbols": "nested key", "k": [1, 2]},
            "symbols": [{"symbol": f"S{i}", "status": "pending", "error": None} for i in range(n)]}


@pytest.mark.parametrize("n", [0, 1, 3])
def test_encoded_state_reads_back_the_same(tmp_path: Path, n: int) -> None:
    state = sample(n)
    write_state(tmp_path, state)
    raw = (tmp_path / "state.json").read_bytes()
    assert json.loads(raw) == state and raw.endswith(b"\n}\n")
    assert read_raw(tmp_path) == state
    assert read_head_raw(tmp_path) == {k: v for k, v in state.items() if k != "symbols"}


@pytest.mark.parametrize("layout", [
    lambda s: json.dumps(s, sort_keys=True, indent=1),  # what earlier versions wrote: symbols mid-file
    lambda s: json.dumps(s),  # edited by hand or by a script
    lambda s: json.dumps(s, indent=1) + "\n",  # symbols last: the quick read may stop before them
    lambda s: json.dumps({"symbols": s["symbols"], **s}, indent=1) + "\n",
])
def test_any_layout_gives_the_right_head(tmp_path: Path, layout: Any) -> None:
    state = sample()
    (tmp_path / "state.json").write_text(layout(state))
    assert read_raw(tmp_path) == state
    head = read_head_raw(tmp_path)
    head.pop("symbols", None)
    assert head == {k: v for k, v in state.items() if k != "symbols"}


def test_a_head_too_long_for_the_quick_read_is_read_whole(tmp_path: Path) -> None:
    state = sample()
    state["options"] = {"long": "x" * (statefile.HEAD_BYTES + 10)}
    write_state(tmp_path, state)
    assert read_head_raw(tmp_path) == state


def test_a_corrupt_or_missing_state_is_an_error_for_the_quick_read_too(tmp_path: Path) -> None:
    with pytest.raises(StateFileError, match="no state file"):
        read_head(tmp_path)
    good = encode_state({"schema": 1, "status": "running"}, [b'{"symbol": "A"}'])
    (tmp_path / "state.json").write_bytes(good[: len(good) // 2])
    with pytest.raises(StateFileError, match="corrupt"):
        read_head(tmp_path)
    (tmp_path / "state.json").write_bytes(good.replace(b'"schema": 1', b'"schema": "1"'))
    with pytest.raises(StateFileError, match="corrupt"):
        read_head(tmp_path)


# -- the tracker's summary -----------------------------------------------------------------------


def test_the_summary_agrees_with_the_snapshot_through_any_history() -> None:
    rng = random.Random(15)
    symbols: list[str | SymbolProgress] = [f"S{i}" for i in range(40)]
    symbols[:3] = [SymbolProgress("S0", "completed", "done", 2, 2, 10, planned=True),
                   SymbolProgress("S1", "failed", "fetching", 1, 3, 5, error="x", planned=True),
                   SymbolProgress("S2", "cancelled", "fetching", 1, 4)]
    clock = Clock()
    tracker = ProgressTracker(symbols, clock=clock)
    tracker.start()
    names = [f"S{i}" for i in range(40)]
    for _ in range(600):
        clock.t += rng.random()
        s = rng.choice(names)
        sp = tracker.snapshot_symbol(s)
        op = rng.randrange(7)
        if op == 0 and sp.status == "pending":
            tracker.symbol_started(s)
        elif op == 1 and sp.status == "running" and not sp.planned:
            tracker.planned(s, rng.randint(1, 5))
        elif op == 2 and sp.status == "running" and sp.planned and sp.segments_done < sp.segments_total:
            tracker.request_made(s)
            tracker.segment_done(s, rng.randint(0, 9))
        elif op == 3 and sp.status == "running":
            tracker.symbol_finished(s, rng.choice(["completed", "failed", "cancelled"]))
        elif op == 4:
            tracker.pause() if rng.random() < 0.5 else tracker.resume()
        elif op == 5:
            tracker.request_failed(throttled=rng.random() < 0.5)
        summary, snap = tracker.summary(), tracker.snapshot()
        for name in ("total", "completed", "failed", "percent", "current", "requests", "throttled",
                     "errors_count", "candles", "elapsed_s", "eta_s", "rate_symbols_per_s", "rate_candles_per_s"):
            assert getattr(summary, name) == pytest.approx(getattr(snap, name)), name


def test_drain_gives_each_change_once() -> None:
    tracker = ProgressTracker(["A", "B", "C"])
    _, everything = tracker.drain(everything=True)
    assert [sp.symbol for sp in everything] == ["A", "B", "C"]
    assert tracker.drain()[1] == []
    tracker.symbol_started("B")
    tracker.stage("B", "fetching")
    _, changed = tracker.drain()
    assert [(sp.symbol, sp.stage) for sp in changed] == [("B", "fetching")]
    assert tracker.drain()[1] == []
