import fcntl
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from ktrdr_collect.storage.csv_store import Bar, CsvStore
from ktrdr_collect.storage.timeframes import parse_ts

T0 = parse_ts("2024-01-02T14:30:00Z")
KEY = ("demo", "1m", "ETH/USD")
SEGMENTS = 60
SEGMENT_BARS = 25
SPAN = SEGMENT_BARS * 60


def segment(k: int) -> tuple[list[Bar], tuple[int, int]]:
    start = T0 + k * SPAN
    bars: list[Bar] = [
        (start + i * 60, float(k), k + 1.0, k - 1.0, k + 0.5, float(i)) for i in range(SEGMENT_BARS)
    ]
    return bars, (start, start + SPAN)


def write_segments(root: str, parity: int, barrier: object) -> None:
    """Write every segment with the given parity; alternate directions so both paths are used."""
    store = CsvStore(Path(root))
    ks = [k for k in range(SEGMENTS) if k % 2 == parity]
    if parity:
        ks.reverse()  # the odd writer goes backwards: backfills interleave with appends
    barrier.wait()  # type: ignore[attr-defined]
    for k in ks:
        bars, covered = segment(k)
        store.write(*KEY, bars, covered)


def assert_complete(root: Path) -> None:
    store = CsvStore(root)
    expected = [bar for k in range(SEGMENTS) for bar in segment(k)[0]]
    assert store.read(*KEY) == expected
    assert store.coverage(*KEY) == [(T0, T0 + SEGMENTS * SPAN)]
    text = store.path(*KEY).read_text()
    assert text.count("\n") == 1 + len(expected)


def test_two_threads_write_interleaved_segments(tmp_path: Path) -> None:
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(parity: int) -> None:
        try:
            write_segments(str(tmp_path), parity, barrier)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert_complete(tmp_path)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_two_processes_write_interleaved_segments(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=write_segments, args=(str(tmp_path), p, barrier)) for p in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert_complete(tmp_path)


def test_lock_excludes_other_open_file_descriptions(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    with store.lock(*KEY):
        fd = os.open(store.lock_path(*KEY), os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(store.lock_path(*KEY), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again after release
    finally:
        os.close(fd)


def test_lock_blocks_another_thread_until_released(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    acquired = threading.Event()

    def contender() -> None:
        with store.lock(*KEY):
            acquired.set()

    with store.lock(*KEY):
        thread = threading.Thread(target=contender)
        thread.start()
        assert not acquired.wait(0.2)
    assert acquired.wait(10)
    thread.join(10)


def test_lock_is_reentrant_within_a_thread(tmp_path: Path) -> None:
    store = CsvStore(tmp_path)
    done = threading.Event()

    def nested() -> None:
        with store.lock(*KEY):
            bars, covered = segment(0)
            store.write(*KEY, bars, covered)
        done.set()

    thread = threading.Thread(target=nested, daemon=True)
    thread.start()
    thread.join(10)
    assert done.is_set()
    assert store.coverage(*KEY) == [segment(0)[1]]
