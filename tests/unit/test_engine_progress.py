from ktrdr_collect.engine.eta import RequestRate, estimate_remaining_requests, eta_seconds
from ktrdr_collect.engine.progress import ProcessingProgress, ProgressTracker, Totals
from tests.unit.fakes import ManualClock


def test_percentage_is_100_without_symbols() -> None:
    p = ProcessingProgress(0, 0, None, 0, 0.0, None)
    assert p.percentage == 100.0
    assert ProcessingProgress(4, 1, "A", 0, 0.0, None).percentage == 25.0


def test_percent_is_mean_of_symbol_fractions() -> None:
    t = ProgressTracker(["A", "B", "C", "D"], clock=ManualClock())
    t.start()
    t.symbol_started("A")
    t.planned("A", 4)
    t.segment_done("A", 10)
    t.symbol_started("B")
    t.symbol_finished("B", "failed", "nope")
    snap = t.snapshot()
    # A: 1/4, B: failed counts as finished (1), C and D: 0
    assert snap.percent == 31.25
    assert snap.failed == 1 and snap.finished == 1 and snap.current == ["A"]


def test_elapsed_excludes_paused_time_and_carries_over() -> None:
    clock = ManualClock()
    t = ProgressTracker(["A"], clock=clock, carried=Totals(requests=5, elapsed_s=10.0))
    t.start()
    clock.advance(2)
    t.pause()
    clock.advance(100)
    assert t.snapshot().elapsed_s == 12.0
    t.resume()
    clock.advance(3)
    snap = t.snapshot()
    assert snap.elapsed_s == 15.0 and snap.requests == 5


def test_eta_after_3_of_10_symbols_at_100ms_is_700ms() -> None:
    clock = ManualClock()
    t = ProgressTracker([f"S{i}" for i in range(10)], clock=clock)
    t.start()
    for i in range(3):
        s = f"S{i}"
        t.symbol_started(s)
        t.planned(s, 1)
        t.request_made(s)
        clock.advance(0.1)
        t.segment_done(s, 100)
        t.symbol_finished(s, "completed")
    progress = t.progress()
    assert progress.completed_symbols == 3
    assert abs(progress.estimated_remaining_ms - 700) < 1
    assert abs(t.snapshot().eta_s - 0.7) < 0.001


def test_eta_unknown_until_something_is_measured_and_zero_at_end() -> None:
    clock = ManualClock()
    t = ProgressTracker(["A", "B"], clock=clock)
    t.start()
    assert t.snapshot().eta_s is None
    for s in ("A", "B"):
        t.symbol_started(s)
        t.planned(s, 2)
        for _ in range(2):
            clock.advance(0.5)
            t.segment_done(s, 1)
        t.symbol_finished(s, "completed")
    assert t.snapshot().eta_s == 0.0


def test_eta_ignores_paused_time() -> None:
    clock = ManualClock()
    t = ProgressTracker(["A"], clock=clock)
    t.start()
    t.symbol_started("A")
    t.planned("A", 10)
    for _ in range(5):
        clock.advance(1.0)
        t.segment_done("A", 1)
    before = t.snapshot().eta_s
    t.pause()
    clock.advance(600)
    t.resume()
    assert t.snapshot().eta_s == before == 5.0


def test_rate_is_capped_by_known_limit() -> None:
    r = RequestRate(window_s=10, limit=2.0)
    for i in range(10):
        r.record(i * 0.1)
    assert r.rate(1.0) == 2.0
    assert estimate_remaining_requests(4, 2, [3, 5]) == 12.0
    assert estimate_remaining_requests(4, 1, []) is None
    assert eta_seconds(10, 2.0) == 5.0 and eta_seconds(0, None) == 0.0 and eta_seconds(3, None) is None


def test_recent_window_follows_a_slowdown() -> None:
    r = RequestRate(window_s=10)
    t = 0.0
    for _ in range(100):  # 10 requests/s for 10 s
        t += 0.1
        r.record(t)
    for _ in range(10):  # then 1 request/s for 10 s
        t += 1.0
        r.record(t)
    assert abs(r.rate(t) - 1.0) < 0.15
