"""Claims (storage/claims.py) and the pipeline's use of them: two jobs never fetch one range."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ktrdr_collect.engine.cancellation import CancellationToken, PauseGate, ProcessingCancelledException
from ktrdr_collect.engine.engine import ProcessingEngine
from ktrdr_collect.engine.pipeline import RetryPolicy, SymbolResult
from ktrdr_collect.engine.progress import ProgressTracker
from ktrdr_collect.providers.demo import DemoSeries
from ktrdr_collect.storage.calendar import DEMO_CALENDAR
from ktrdr_collect.storage.claims import ClaimBook, SeriesClaims, claims_folder
from ktrdr_collect.storage.csv_store import CsvStore
from ktrdr_collect.storage.gaps import subtract
from ktrdr_collect.storage.timeframes import parse_ts
from tests.unit.fakes import ScriptedProvider

FAST = RetryPolicy(attempts=3, base_s=0.001, cap_s=0.002)
WAIT_S = 20.0  # deadline of every wait below (a failure, never a pacing)


def series_claims(root: Path, owner: str) -> SeriesClaims:
    claims = ClaimBook(owner).series(CsvStore(root), "scripted", "1d", "AAPL")
    assert claims is not None
    return claims


def claim_files(root: Path) -> list[str]:
    folder = claims_folder(CsvStore(root).lock_path("scripted", "1d", "AAPL"))
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".claim")) if folder.is_dir() else []


def poll(fn: Callable[[], Any], what: str) -> Any:
    event = threading.Event()
    for _ in range(int(WAIT_S / 0.005)):
        if value := fn():
            return value
        event.wait(0.005)
    raise AssertionError(f"timed out waiting for {what}")


# --- the claim files --------------------------------------------------------------------------


def test_a_claim_is_seen_by_others_until_released(tmp_path: Path) -> None:
    a, b = series_claims(tmp_path, "job-a"), series_claims(tmp_path, "job-b")
    with a.locked():
        assert a.others() == []
        a.take([(0, 100), (200, 300)])
    with b.locked():
        seen = b.others()
    assert [(c.start, c.end) for c in seen] == [(0, 100), (200, 300)]
    assert {c.owner() for c in seen} == {"job-a"}
    with a.locked():
        assert a.others() == []  # its own claims are not "others"
    a.release(0, 150)
    with b.locked():
        assert [(c.start, c.end) for c in b.others()] == [(200, 300)]
    a.release_all()
    with b.locked():
        assert b.others() == []
    assert claim_files(tmp_path) == []


def test_consecutive_ranges_are_one_claim_that_shrinks_as_parts_are_released(tmp_path: Path) -> None:
    a, b = series_claims(tmp_path, "job-a"), series_claims(tmp_path, "job-b")

    def seen() -> list[tuple[int, int]]:
        with b.locked():
            return [(c.start, c.end) for c in b.others()]

    with a.locked():
        a.take([(0, 10)])
        a.take([(10, 20), (20, 30)])
    assert seen() == [(0, 30)] and len(claim_files(tmp_path)) == 1  # one file, however long the batch
    with b.locked():
        (claim,) = b.others()
    with claim.watch() as watch:
        a.release(10, 20)  # a part in the middle: what is left stays claimed
        assert seen() == [(0, 10), (20, 30)] and a.held == [(0, 10), (20, 30)]
        assert not watch.released()  # its file (renamed) holds what is left of it
        a.release(0, 10)
        assert seen() == [(20, 30)] and watch.released()  # a waiter then looks again, and waits for (20, 30)
    a.release(15, 40)
    assert seen() == [] and claim_files(tmp_path) == []


def test_a_watch_sees_the_release(tmp_path: Path) -> None:
    a, b = series_claims(tmp_path, "job-a"), series_claims(tmp_path, "job-b")
    with a.locked():
        a.take([(10, 20)])
    with b.locked():
        (claim,) = b.others()
    with claim.watch() as watch:
        assert not watch.released()
        assert not watch.released()
        a.release(10, 20)
        assert watch.released()
    with claim.watch() as watch:  # gone before it is watched: released
        assert watch.released()


HOLDER = """
import sys
from pathlib import Path
from ktrdr_collect.storage.claims import ClaimBook
from ktrdr_collect.storage.csv_store import CsvStore
claims = ClaimBook("job-dead").series(CsvStore(Path(sys.argv[1])), "scripted", "1d", "AAPL")
with claims.locked():
    claims.take([(1000, 2000)])
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def holder(root: Path) -> Iterator[subprocess.Popen[str]]:
    """A real process holding a claim on [1000, 2000) until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_claim_dies_with_its_process(tmp_path: Path) -> None:
    b = series_claims(tmp_path, "job-b")
    with holder(tmp_path) as proc:
        with b.locked():
            (claim,) = b.others()
        assert (claim.start, claim.end, claim.owner()) == (1000, 2000, "job-dead")
        with claim.watch() as watch:
            assert not watch.released()
            proc.kill()
            proc.wait()
            assert watch.released()
    assert len(claim_files(tmp_path)) == 1  # the dead claim's file is still there...
    with b.locked():
        assert b.others() == []
    assert claim_files(tmp_path) == []  # ...until someone looks


def test_an_owner_label_is_safe_to_show(tmp_path: Path) -> None:
    a, b = series_claims(tmp_path, "job\x1b]52;c;x\x07"), series_claims(tmp_path, "job-b")
    with a.locked():
        a.take([(0, 10)])
    with b.locked():
        (claim,) = b.others()
    assert claim.owner() == "job\\x1b]52;c;x\\x07"
    claim.path.write_text("not json")  # a damaged claim file still names someone
    assert claim.owner() == "another job"
    a.release_all()


def test_a_link_or_a_folder_in_the_claims_folder_is_no_claim(tmp_path: Path) -> None:
    a, b = series_claims(tmp_path, "job-a"), series_claims(tmp_path, "job-b")
    with a.locked():
        a.take([(0, 10)])
    (claim,) = [p for p in a.folder.iterdir() if p.name.endswith(".claim")]
    (a.folder / "20_30.abc.claim").symlink_to(claim)
    (a.folder / "40_50.abd.claim").mkdir()
    with b.locked():
        assert [(c.start, c.end) for c in b.others()] == [(0, 10)]
    a.release_all()
    with b.locked():
        assert b.others() == []
    assert claim.exists() is False and (a.folder / "40_50.abd.claim").is_dir()  # left alone, never followed


def test_a_store_without_lock_files_has_no_claims() -> None:
    assert ClaimBook("x").series(object(), "scripted", "1d", "AAPL") is None


# --- two engines on one series ------------------------------------------------------------------

START, END = "2024-01-01", "2024-04-30"  # 86 weekdays: 9 segments of 10 1d bars


class Gated(ScriptedProvider):
    """Demo bars; the first fetch waits for `go` (so that a second engine meets its claim)."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.first = threading.Event()
        super().__init__(on_fetch=self._hold, max_bars=10)

    def _hold(self, symbol: str, n: int) -> None:
        if n == 1:
            self.first.set()
            assert self.go.wait(WAIT_S)


def run_in_thread(engine: ProcessingEngine, token: CancellationToken | None = None,
                  tracker: ProgressTracker | None = None) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def target() -> None:
        try:
            out.extend(engine.process_batch(["AAPL"], "1d", START, END, cancellation_token=token, tracker=tracker))
        except ProcessingCancelledException as e:
            out.extend(e.partial_results)

    thread = threading.Thread(target=target, name="test-engine")
    thread.start()
    return thread, out


def engine_on(root: Path, provider: ScriptedProvider, owner: str) -> ProcessingEngine:
    return ProcessingEngine(provider, CsvStore(root), workers=1, retry=FAST, owner=owner)


def waiting_for(tracker: ProgressTracker) -> str | None:
    sp = tracker.snapshot_symbol("AAPL")
    return sp.waiting_for if sp.stage == "waiting" else None


def test_a_second_engine_waits_for_the_claimed_range_and_fetches_nothing(tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    engine_on(alone, ScriptedProvider(max_bars=10), "solo").process_batch(["AAPL"], "1d", START, END)
    root = tmp_path / "shared"
    first, second = Gated(), ScriptedProvider(max_bars=10)
    a = engine_on(root, first, "job-a")
    b = engine_on(root, second, "job-b")
    tracker = b.new_tracker(["AAPL"], "1d")
    ta, ra = run_in_thread(a)
    assert first.first.wait(WAIT_S)  # A holds its first segment's claim, inside its request
    tb, rb = run_in_thread(b, tracker=tracker)
    assert poll(lambda: waiting_for(tracker), "B to wait") == "job-a"
    first.go.set()
    ta.join(WAIT_S)
    tb.join(WAIT_S)
    assert [r.status for r in ra + rb] == ["completed", "completed"]
    calls = sorted((lo, hi) for _, lo, hi in first.calls + second.calls)
    assert len(calls) == 9 and all(x[1] <= y[0] for x, y in zip(calls, calls[1:], strict=False))  # each range once
    assert rb[0].requests == len(second.calls) < 9  # B took over at most where A was between segments
    assert tracker.snapshot_symbol("AAPL").waiting_for is None
    assert (root / "scripted/1d/AAPL.csv").read_bytes() == (alone / "scripted/1d/AAPL.csv").read_bytes()
    assert claim_files(root) == []


def test_cancel_stops_a_waiting_engine_at_once(tmp_path: Path) -> None:
    first, second = Gated(), ScriptedProvider(max_bars=10)
    a, b = engine_on(tmp_path, first, "job-a"), engine_on(tmp_path, second, "job-b")
    tracker = b.new_tracker(["AAPL"], "1d")
    token = CancellationToken()
    ta, _ = run_in_thread(a)
    assert first.first.wait(WAIT_S)
    tb, rb = run_in_thread(b, token=token, tracker=tracker)
    poll(lambda: waiting_for(tracker), "B to wait")
    token.cancel()
    tb.join(WAIT_S)
    assert not tb.is_alive()  # while A still holds its claim
    assert [r.status for r in rb] == ["cancelled"] and second.calls == []
    first.go.set()
    ta.join(WAIT_S)


def ts(day: str) -> int:
    return parse_ts(day + "T00:00:00Z")


def store_demo(root: Path, lo: int, hi: int) -> None:
    series = DemoSeries("AAPL", "1d")
    CsvStore(root).write("scripted", "1d", "AAPL", [series.bar(t) for t in DEMO_CALENDAR.bar_times("1d", lo, hi)],
                         (lo, hi))


def overlapping(calls: list[tuple[str, int, int]], lo: int, hi: int) -> list[tuple[str, int, int]]:
    return [c for c in calls if c[1] < hi and lo < c[2]]


@pytest.mark.parametrize("holder_stores", [True, False], ids=["holder-stores", "holder-gives-up"])
def test_overlapping_ranges_fetch_the_free_part_and_wait_for_the_claimed(tmp_path: Path, holder_stores: bool) -> None:
    """Another job holds January to March; this one wants February to April: it fetches April
    meanwhile, waits for the claim, then fetches only what the holder did not store."""
    jan, mar = ts("2024-01-01"), ts("2024-04-01")
    held = series_claims(tmp_path, "job-a")
    with held.locked():
        held.take([(jan, mar)])
    provider = ScriptedProvider(max_bars=10)
    engine = ProcessingEngine(provider, CsvStore(tmp_path), workers=1, retry=FAST, owner="job-b")
    tracker = engine.new_tracker(["AAPL"], "1d")
    thread, out = threading.Thread(), []
    try:
        def target() -> None:
            out.extend(engine.process_batch(["AAPL"], "1d", "2024-02-01", END, tracker=tracker))

        thread = threading.Thread(target=target, name="test-engine")
        thread.start()
        assert poll(lambda: waiting_for(tracker), "the engine to wait") == "job-a"
        assert provider.calls and not overlapping(provider.calls, jan, mar)  # April meanwhile
        assert not subtract((mar, ts("2024-04-30")), CsvStore(tmp_path).coverage("scripted", "1d", "AAPL"))
        if holder_stores:
            store_demo(tmp_path, jan, mar)
    finally:
        held.release_all()
        thread.join(WAIT_S)
    assert [r.status for r in out] == ["completed"]
    fetched_claimed = overlapping(provider.calls, jan, mar)
    if holder_stores:
        assert fetched_claimed == []
    else:  # the claim went without its bars: this job fetched them itself
        assert not subtract((ts("2024-02-01"), mar), [(c[1], c[2]) for c in fetched_claimed])
    assert not subtract((ts("2024-02-01"), ts("2024-04-30")), CsvStore(tmp_path).coverage("scripted", "1d", "AAPL"))
    assert claim_files(tmp_path) == []


def test_what_others_left_of_a_segment_without_a_session_is_recorded_without_asking(tmp_path: Path) -> None:
    """Another job held and stored Monday 1 to Saturday 13 January; this job's first segment runs
    to Monday 15: the weekend left over holds no bar, so it is recorded, not requested."""
    jan1, sat = ts("2024-01-01"), ts("2024-01-13")
    held = series_claims(tmp_path, "job-a")
    with held.locked():
        held.take([(jan1, sat)])
    provider = ScriptedProvider(max_bars=10)
    engine = engine_on(tmp_path, provider, "job-b")
    tracker = engine.new_tracker(["AAPL"], "1d")
    out: list[Any] = []
    thread = threading.Thread(
        target=lambda: out.extend(engine.process_batch(["AAPL"], "1d", START, END, tracker=tracker)),
        name="test-engine")
    thread.start()
    try:
        assert poll(lambda: waiting_for(tracker), "the engine to wait") == "job-a"  # a short claim: waited for
        assert provider.calls == []
        store_demo(tmp_path, jan1, sat)
    finally:
        held.release_all()
        thread.join(WAIT_S)
    assert [r.status for r in out] == ["completed"]
    assert not overlapping(provider.calls, jan1, ts("2024-01-15"))
    assert len(provider.calls) == 8  # the other 8 segments
    assert not subtract((jan1, ts("2024-04-30")), CsvStore(tmp_path).coverage("scripted", "1d", "AAPL"))


def test_a_paused_job_releases_its_claims_so_others_go_on(tmp_path: Path) -> None:
    """A backfill (segments before stored data, written in a batch under their claims) is paused:
    it stores its batch and releases its claims; another job fetches the rest meanwhile."""
    store_demo(tmp_path, ts("2024-03-01"), ts("2024-04-30"))
    gate = PauseGate()
    first = ScriptedProvider(on_fetch=lambda symbol, n: n == 2 and gate.pause(), max_bars=10)
    second = ScriptedProvider(max_bars=10)
    a, b = engine_on(tmp_path, first, "job-a"), engine_on(tmp_path, second, "job-b")
    out: list[Any] = []
    ta = threading.Thread(target=lambda: out.extend(a.process_batch(["AAPL"], "1d", START, END, gate=gate)),
                          name="test-engine")
    ta.start()
    try:
        poll(lambda: len(first.calls) == 2 and not claim_files(tmp_path), "the paused job to step aside")
        assert ts("2024-01-01") in {lo for lo, _ in CsvStore(tmp_path).coverage("scripted", "1d", "AAPL")}
        rb = b.process_batch(["AAPL"], "1d", START, END)  # while the first job is paused
        assert [r.status for r in rb] == ["completed"] and len(second.calls) >= 1
        assert not subtract((ts("2024-01-01"), ts("2024-04-30")), CsvStore(tmp_path).coverage("scripted", "1d", "AAPL"))
    finally:
        gate.resume()
        ta.join(WAIT_S)
    assert [r.status for r in out] == ["completed"] and len(first.calls) == 2  # nothing left to fetch
    calls = [(lo, hi) for _, lo, hi in first.calls + second.calls]
    assert all(x[1] <= y[0] or y[1] <= x[0] for i, x in enumerate(calls) for y in calls[i + 1:])  # no range twice


@pytest.mark.parametrize("seed", range(4))
def test_crossing_windows_and_backfills_finish_and_fetch_each_range_once(tmp_path: Path, seed: int) -> None:
    """Three engines on one series at once, windows overlapping in different ways, two of them
    extending stored data backwards (batched writes under claims): nobody waits forever, no range
    is fetched twice, and the file is the one a single job would write."""
    rng = random.Random(seed)
    windows = [("2023-01-02", "2024-04-30"), ("2023-06-01", "2024-02-01"), ("2023-03-01", "2024-04-30")]
    alone = tmp_path / "alone"
    store_demo(alone, ts("2024-01-01"), ts("2024-02-01"))
    engine_on(alone, ScriptedProvider(max_bars=5), "solo").process_batch(["AAPL"], "1d", "2023-01-02", END)
    root = tmp_path / "shared"
    store_demo(root, ts("2024-01-01"), ts("2024-02-01"))
    pause = threading.Event()
    providers = [ScriptedProvider(on_fetch=lambda s, n: pause.wait(rng.uniform(0, 0.003)), max_bars=5)
                 for _ in windows]
    results: list[Any] = []
    threads = [threading.Thread(target=lambda p=p, w=w, i=i: results.extend(
                   engine_on(root, p, f"job-{i}").process_batch(["AAPL"], "1d", *w)), name="test-engine")
               for i, (p, w) in enumerate(zip(providers, windows, strict=True))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads), "an engine never finished"
    assert [r.status for r in results] == ["completed"] * 3
    calls = sorted((lo, hi) for p in providers for _, lo, hi in p.calls)
    assert all(x[1] <= y[0] for x, y in zip(calls, calls[1:], strict=False)), "a range was fetched twice"
    assert (root / "scripted/1d/AAPL.csv").read_bytes() == (alone / "scripted/1d/AAPL.csv").read_bytes()
    assert claim_files(root) == []


def test_results_are_symbol_results() -> None:  # the type the engine hands back is unchanged
    assert SymbolResult("X", "completed").ok
