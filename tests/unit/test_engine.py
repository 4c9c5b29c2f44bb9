import errno
import threading
from pathlib import Path

import pytest

from ktrdr_collect.engine.cancellation import CancellationToken, PauseGate, ProcessingCancelledException
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.engine.pipeline import RetryPolicy
from ktrdr_collect.engine.progress import ProcessingProgress
from ktrdr_collect.providers.base import RateLimitedError, TransientError, UnknownSymbolError
from ktrdr_collect.providers.demo import DemoProvider
from ktrdr_collect.storage.csv_store import CsvStore
from tests.unit.fakes import ManualClock, ScriptedProvider

START, END = "2023-01-02", "2023-03-01"  # 42 weekdays: one 1d segment per symbol
FAST = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002)


def engine(tmp_path: Path, provider=None, workers: int = 4, **kw) -> ProcessingEngine:  # type: ignore[no-untyped-def]
    return ProcessingEngine(provider or ScriptedProvider(), CsvStore(tmp_path / "data"), workers=workers,
                            retry=FAST, **kw)


def test_callback_at_least_once_per_symbol_and_ends_at_100(tmp_path: Path) -> None:
    seen: list[ProcessingProgress] = []
    symbols = [f"S{i}" for i in range(20)]
    results = engine(tmp_path).process_batch(symbols, "1d", START, END, progress_callback=seen.append)
    assert [r.symbol for r in results] == symbols and all(r.ok for r in results)
    assert len(seen) >= len(symbols)
    assert seen[-1].percentage == 100.0 and seen[-1].completed_symbols == 20
    assert [p.completed_symbols for p in seen] == sorted(p.completed_symbols for p in seen)


def test_cancel_at_2_of_100_stops_at_the_next_symbol(tmp_path: Path) -> None:
    token = CancellationToken()

    def on_fetch(symbol: str, n: int) -> None:
        if symbol == "S2":  # the third symbol starts after 2 have finished
            token.cancel()

    provider = ScriptedProvider(on_fetch=on_fetch)
    symbols = [f"S{i}" for i in range(100)]
    with pytest.raises(ProcessingCancelledException) as info:
        engine(tmp_path, provider, workers=1).process_batch(symbols, "1d", START, END,
                                                            cancellation_token=token)
    partial = info.value.partial_results
    assert len(partial) < 100
    assert [r.status for r in partial] == ["completed", "completed", "cancelled"]
    assert {c[0] for c in provider.calls} == {"S0", "S1", "S2"}  # pending futures never ran
    assert not (tmp_path / "data" / "scripted" / "1d" / "S2.csv").exists()  # cancelled fetch not stored


def test_throw_if_cancelled_carries_partial_results() -> None:
    token = CancellationToken()
    token.throw_if_cancelled([1])
    token.cancel()
    with pytest.raises(ProcessingCancelledException) as info:
        token.throw_if_cancelled(["partial"])
    assert info.value.partial_results == ["partial"]


def test_failed_symbols_are_counted_and_reported(tmp_path: Path) -> None:
    def on_fetch(symbol: str, n: int) -> None:
        if symbol.startswith("BAD"):
            raise UnknownSymbolError(f"unknown symbol {symbol}")

    seen: list[ProcessingProgress] = []
    results = engine(tmp_path, ScriptedProvider(on_fetch)).process_batch(
        ["OK1", "BAD1", "OK2", "BAD2"], "1d", START, END, progress_callback=seen.append)
    by = {r.symbol: r for r in results}
    assert by["OK1"].ok and by["OK2"].ok
    assert by["BAD1"].status == "failed" and "unknown symbol BAD1" in by["BAD1"].error
    assert seen[-1].errors_count >= 2 and seen[-1].percentage == 100.0


def test_a_raising_callback_never_stops_processing(tmp_path: Path) -> None:
    calls = []

    def bad(progress: ProcessingProgress) -> None:
        calls.append(progress)
        raise RuntimeError("boom")

    results = engine(tmp_path).process_batch(["A", "B", "C"], "1d", START, END, progress_callback=bad)
    assert all(r.ok for r in results) and len(calls) >= 3


def test_a_blocked_callback_never_blocks_workers(tmp_path: Path) -> None:
    release = threading.Event()
    eng = engine(tmp_path)
    symbols = [f"S{i}" for i in range(10)]
    tracker = eng.new_tracker(symbols)
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(r=eng.process_batch(
        symbols, "1d", START, END, progress_callback=lambda p: release.wait(), tracker=tracker)))
    worker.start()
    version = 0
    while tracker.snapshot().finished < 10:  # all symbols finish while the callback is stuck
        version = tracker.wait_for_change(version, timeout=5)
        assert worker.is_alive()
    release.set()
    worker.join(10)
    assert len(out["r"]) == 10


def test_transient_errors_are_retried(tmp_path: Path) -> None:
    def on_fetch(symbol: str, n: int) -> None:
        if n == 1:
            raise TransientError("connection reset")

    eng = engine(tmp_path, ScriptedProvider(on_fetch))
    tracker = eng.new_tracker(["A"])
    [result] = eng.process_batch(["A"], "1d", START, END, tracker=tracker)
    assert result.ok and result.requests == 2
    assert tracker.snapshot().errors_count == 1


def test_transient_errors_give_up_after_the_attempts(tmp_path: Path) -> None:
    def on_fetch(symbol: str, n: int) -> None:
        raise TransientError("timeout")

    [result] = engine(tmp_path, ScriptedProvider(on_fetch)).process_batch(["A"], "1d", START, END)
    assert result.status == "failed" and "gave up after 3 attempts" in result.error and result.requests == 3


def test_rate_limits_wait_and_count_throttled(tmp_path: Path) -> None:
    def on_fetch(symbol: str, n: int) -> None:
        if n <= 2:
            raise RateLimitedError("429", retry_after=0.001)

    eng = engine(tmp_path, ScriptedProvider(on_fetch))
    tracker = eng.new_tracker(["A"])
    [result] = eng.process_batch(["A"], "1d", START, END, tracker=tracker)
    snap = tracker.snapshot()
    assert result.ok and snap.throttled == 2 and snap.errors_count == 0 and snap.requests == 3


def test_garbage_from_the_provider_fails_only_that_symbol(tmp_path: Path) -> None:
    def garbage(symbol: str, bars: list) -> list:
        if symbol == "JUNK":
            return [(bars[0][0], float("nan"), 1.0, 1.0, 1.0, 1.0)]
        return bars

    results = engine(tmp_path, ScriptedProvider(bars=garbage)).process_batch(["OK", "JUNK"], "1d", START, END)
    assert results[0].ok
    assert results[1].status == "failed" and "non-numeric" in results[1].error
    assert not (tmp_path / "data" / "scripted" / "1d" / "JUNK.csv").exists()


def test_a_full_disk_fails_the_symbol_and_keeps_going(tmp_path: Path) -> None:
    store = CsvStore(tmp_path / "data")
    real_write = store.write

    def write(provider, timeframe, symbol, bars, covered, **kw):  # type: ignore[no-untyped-def]
        if symbol == "FULL":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(provider, timeframe, symbol, bars, covered, **kw)

    store.write = write  # type: ignore[method-assign]
    eng = ProcessingEngine(ScriptedProvider(), store, workers=2, retry=FAST)
    results = eng.process_batch(["A", "FULL", "B"], "1d", START, END)
    assert [r.status for r in results] == ["completed", "failed", "completed"]
    assert "No space left on device" in results[1].error


def test_second_run_fetches_nothing_and_partial_windows_fetch_only_the_gap(tmp_path: Path) -> None:
    provider = ScriptedProvider()
    eng = engine(tmp_path, provider)
    eng.process_batch(["A"], "1d", "2023-01-01", "2023-02-01")
    first = len(provider.calls)
    eng.process_batch(["A"], "1d", "2023-01-01", "2023-02-01")
    assert len(provider.calls) == first == 1
    eng.process_batch(["A"], "1d", "2023-01-01", "2023-03-01")
    assert len(provider.calls) == 2
    _, start, end = provider.calls[-1]
    assert start >= 1675209600  # 2023-02-01: only the missing part was asked for
    rows = (tmp_path / "data" / "scripted" / "1d" / "A.csv").read_text().splitlines()
    assert len(rows) == 1 + 42  # header + 22 + 20 weekdays in January and February 2023


def test_segments_respect_max_bars_and_values_do_not_depend_on_the_split(tmp_path: Path) -> None:
    small = DemoProvider({"latency_ms": 0, "max_bars": 7})
    big = DemoProvider({"latency_ms": 0})
    a = ProcessingEngine(small, CsvStore(tmp_path / "a"), workers=2)
    b = ProcessingEngine(big, CsvStore(tmp_path / "b"), workers=2)
    [ra] = a.process_batch(["AAPL"], "1h", "2023-01-02", "2023-01-09")
    [rb] = b.process_batch(["AAPL"], "1h", "2023-01-02", "2023-01-09")
    assert ra.requests == 5 and rb.requests == 1  # 35 bars: ceil(35 / 7), ceil(35 / 1000)
    assert (tmp_path / "a/demo/1h/AAPL.csv").read_bytes() == (tmp_path / "b/demo/1h/AAPL.csv").read_bytes()


def test_a_closed_gate_stops_requests_until_opened(tmp_path: Path) -> None:
    provider = ScriptedProvider()
    eng = engine(tmp_path, provider, workers=1)
    gate = PauseGate()
    gate.pause()
    tracker = eng.new_tracker(["A"])
    worker = threading.Thread(target=eng.process_batch, args=(["A"], "1d", START, END),
                              kwargs={"gate": gate, "tracker": tracker})
    worker.start()
    version = 0
    while tracker.snapshot_symbol("A").stage != "fetching":
        version = tracker.wait_for_change(version, timeout=5)
    worker.join(0.2)  # it must still be waiting at the gate
    assert worker.is_alive() and provider.calls == []
    gate.resume()
    worker.join(5)
    assert not worker.is_alive() and len(provider.calls) == 1


def test_cancel_interrupts_a_paused_batch(tmp_path: Path) -> None:
    eng = engine(tmp_path, workers=2)
    gate, token = PauseGate(), CancellationToken()
    gate.pause()
    out: dict = {}

    def run() -> None:
        try:
            eng.process_batch(["A", "B", "C"], "1d", START, END, gate=gate, cancellation_token=token)
        except ProcessingCancelledException as e:
            out["partial"] = e.partial_results

    worker = threading.Thread(target=run)
    worker.start()
    token.cancel()
    worker.join(5)
    assert not worker.is_alive()
    assert all(r.status == "cancelled" for r in out["partial"])


def test_injected_clock_drives_elapsed(tmp_path: Path) -> None:
    clock = ManualClock()
    provider = ScriptedProvider(on_fetch=lambda s, n: clock.advance(0.1))
    eng = engine(tmp_path, provider, workers=1, clock=clock)
    seen: list[ProcessingProgress] = []
    eng.process_batch([f"S{i}" for i in range(10)], "1d", START, END, progress_callback=seen.append)
    after_three = next(p for p in seen if p.completed_symbols == 3)
    assert abs(after_three.elapsed_time_ms - 300) < 1
    assert abs(after_three.estimated_remaining_ms - 700) < 1


def test_backfill_before_stored_data_is_written_in_one_batch(tmp_path: Path) -> None:
    store = CsvStore(tmp_path / "data")
    writes: list[int] = []
    real_write = store.write

    def write(provider, timeframe, symbol, bars, covered, **kw):  # type: ignore[no-untyped-def]
        writes.append(len(bars))
        return real_write(provider, timeframe, symbol, bars, covered, **kw)

    store.write = write  # type: ignore[method-assign]
    eng = ProcessingEngine(ScriptedProvider(max_bars=5), store, workers=1, retry=FAST)
    eng.process_batch(["A"], "1d", "2023-06-01", "2023-07-01")
    writes.clear()
    tracker = eng.new_tracker(["A"])
    [result] = eng.process_batch(["A"], "1d", "2023-01-01", "2023-07-01", tracker=tracker)
    assert result.ok and result.requests == 22  # 108 weekdays before June, 5 a request
    assert writes == [108]  # one rewrite instead of 22
    assert result.candles == 108 and tracker.snapshot().candles == 108
    fresh = CsvStore(tmp_path / "fresh")
    ProcessingEngine(ScriptedProvider(), fresh, workers=1).process_batch(["A"], "1d", "2023-01-01", "2023-07-01")
    assert (tmp_path / "data/scripted/1d/A.csv").read_bytes() == (tmp_path / "fresh/scripted/1d/A.csv").read_bytes()


def test_the_api_is_importable_from_the_package(tmp_path: Path) -> None:
    import ktrdr_collect

    engine = ktrdr_collect.ProcessingEngine(ktrdr_collect.create_provider("demo", {"latency_ms": 0}),
                                            ktrdr_collect.open_store("csv", tmp_path), workers=2)
    [result] = engine.process_batch(["AAPL"], "1d", START, END)
    assert isinstance(result, ktrdr_collect.SymbolResult) and result.candles == 42


def test_a_worker_fetches_its_next_segment_while_the_last_one_is_written(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: W workers keep W requests in flight. With every write counted as slow next to
    its request, from the second on (the first has no time to go by) they go behind the worker:
    the second segment's write waits until the third request has gone out, which without a
    writer beside the worker never happens (the wait runs out and the symbol fails). The file is
    the same as written one segment at a time."""
    from ktrdr_collect.engine import pipeline

    monkeypatch.setattr(pipeline, "WRITE_BEHIND_SHARE", -1.0)  # every write counts as slow
    third_request = threading.Event()
    waited: list[bool] = []
    writers: list[str] = []

    class SlowStore(CsvStore):
        def write(self, provider, timeframe, symbol, bars, covered):  # type: ignore[no-untyped-def,override]
            writers.append(threading.current_thread().name)
            if len(writers) == 2:
                waited.append(third_request.wait(10))
                if not waited[0]:
                    raise OSError(errno.EIO, "the next request never went out")
            return super().write(provider, timeframe, symbol, bars, covered)

    def on_fetch(symbol: str, n: int) -> None:
        if n == 3:
            third_request.set()

    provider = ScriptedProvider(on_fetch=on_fetch, max_bars=10)
    store = SlowStore(tmp_path / "behind")
    [result] = ProcessingEngine(provider, store, workers=1, retry=FAST).process_batch(["A"], "1d", START, END)
    assert result.ok and result.candles == 42 and result.segments_done == result.segments_total == 5
    assert waited == [True]
    assert writers[0].startswith("ktrdr-worker") and all(w.startswith("ktrdr-store") for w in writers[1:])
    plain = CsvStore(tmp_path / "plain")
    for segment in [(c[1], c[2]) for c in provider.calls]:  # the same segments, written in turn
        plain.write("scripted", "1d", "A", ScriptedProvider().fetch("A", "1d", *segment, None), segment)  # type: ignore[arg-type]
    assert store.path("scripted", "1d", "A").read_bytes() == plain.path("scripted", "1d", "A").read_bytes()
    assert not [t for t in threading.enumerate() if t.name.startswith("ktrdr-store")]  # the writers are gone


def test_writes_quick_next_to_requests_stay_in_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below WRITE_BEHIND_SHARE of a request, the hand-off would cost more than it saves."""
    from ktrdr_collect.engine import pipeline

    monkeypatch.setattr(pipeline, "WRITE_BEHIND_SHARE", 1e9)  # every write counts as quick
    writers: list[str] = []

    class Store(CsvStore):
        def write(self, provider, timeframe, symbol, bars, covered):  # type: ignore[no-untyped-def,override]
            writers.append(threading.current_thread().name)
            return super().write(provider, timeframe, symbol, bars, covered)

    [result] = ProcessingEngine(ScriptedProvider(max_bars=10), Store(tmp_path / "data"), workers=1,
                                retry=FAST).process_batch(["A"], "1d", START, END)
    assert result.ok and result.candles == 42
    assert len(writers) == 5 and all(w.startswith("ktrdr-worker") for w in writers)


def test_a_write_that_fails_behind_the_worker_fails_the_symbol(tmp_path: Path) -> None:
    """The second write goes behind the worker (the first took longer than its request) and finds
    the disk full: the symbol fails with the store's error, what was stored stays counted."""

    class FullStore(CsvStore):
        writes = 0

        def write(self, provider, timeframe, symbol, bars, covered):  # type: ignore[no-untyped-def,override]
            FullStore.writes += 1
            if FullStore.writes == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(provider, timeframe, symbol, bars, covered)

    provider = ScriptedProvider(max_bars=10)
    [result] = ProcessingEngine(provider, FullStore(tmp_path / "data"), workers=1, retry=FAST).process_batch(
        ["A"], "1d", START, END)
    assert result.status == "failed" and result.error == "cannot store data: No space left on device"
    assert result.candles == 10  # the first segment, stored before the disk filled
    assert len(provider.calls) <= 3  # it stopped at the next write it settled
