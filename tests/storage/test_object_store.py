"""ObjectParquetStore against a local S3 server (moto, tests/services.py): the same bars as the
local Parquet store; commits by conditional put, so racing writers, crashes between upload and
commit, and retried puts never lose or double a bar."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("s3fs")

import ktrdr_collect  # noqa: E402
from ktrdr_collect.errors import InvalidInputError  # noqa: E402
from ktrdr_collect.storage.object_store import Conflict, ObjectParquetStore  # noqa: E402
from ktrdr_collect.storage.open import open_store  # noqa: E402
from ktrdr_collect.storage.parquet_store import ParquetStore  # noqa: E402
from ktrdr_collect.storage.series import Bar  # noqa: E402

KEY = ("demo", "1h", "AAPL")
H = 3600


def bars(start: int, n: int, price: float = 1.0) -> list[Bar]:
    return [(start + i * H, price + i, price + i + 1, price + i - 1, price + i, 10.0 + i) for i in range(n)]


def test_open_store_picks_the_object_store_for_a_url(s3_url: str) -> None:
    store = open_store("parquet", s3_url)
    assert isinstance(store, ObjectParquetStore)
    assert store.root == s3_url
    assert isinstance(open_store("parquet", Path(s3_url)), ObjectParquetStore)  # s3:/bucket: a Path's spelling
    assert store.path(*KEY) == f"{s3_url}/demo/1h/AAPL.parquet"
    with pytest.raises(InvalidInputError, match="--format csv needs a local folder"):
        open_store("csv", s3_url)
    with pytest.raises(InvalidInputError, match="not supported"):
        open_store("parquet", "gs://bucket/data")


def test_writes_read_back_like_the_local_parquet_store(s3_url: str, tmp_path: Path) -> None:
    remote = ObjectParquetStore(s3_url, max_parts=4)
    local = ParquetStore(tmp_path, max_parts=4)
    writes = [(bars(0, 10), (0, 10 * H)), (bars(20 * H, 5, 7.0), (20 * H, 30 * H)),
              (bars(5 * H, 10, 3.0), (5 * H, 15 * H)), ([], (40 * H, 50 * H))]
    writes += [(bars((100 + 3 * i) * H, 2, float(i)), ((100 + 3 * i) * H, (102 + 3 * i) * H)) for i in range(8)]
    for new, covered in writes:
        assert remote.write(*KEY, new, covered) == local.write(*KEY, new, covered)
    assert remote.read(*KEY) == local.read(*KEY)
    assert remote.read(*KEY, 6 * H, 22 * H) == local.read(*KEY, 6 * H, 22 * H)
    assert remote.coverage(*KEY) == local.coverage(*KEY)
    assert (remote.first_ts(*KEY), remote.last_ts(*KEY)) == (local.first_ts(*KEY), local.last_ts(*KEY))
    assert remote.row_count(*KEY) == local.row_count(*KEY)
    assert remote.count(*KEY, [(0, 8 * H)]) == local.count(*KEY, [(0, 8 * H)])
    assert len(remote.manifest(*KEY).parts) <= 4  # compacted like the local store
    assert remote.size(*KEY) > 0
    assert remote.erase(*KEY, 3 * H, 21 * H) == local.erase(*KEY, 3 * H, 21 * H)
    assert remote.read(*KEY) == local.read(*KEY) and remote.coverage(*KEY) == local.coverage(*KEY)
    remote.replace(*KEY, bars(0, 3), [(0, 3 * H)])
    local.replace(*KEY, bars(0, 3), [(0, 3 * H)])
    assert remote.read(*KEY) == local.read(*KEY) and remote.coverage(*KEY) == local.coverage(*KEY)


def test_parts_carry_the_parquet_schema_and_labels(s3_url: str) -> None:
    import pyarrow.parquet as pq
    import s3fs

    from ktrdr_collect.storage.parquet_store import SCHEMA

    store = ObjectParquetStore(s3_url)
    store.write(*KEY, bars(0, 3), (0, 3 * H))
    part = store.manifest(*KEY).parts[0]
    fs = s3fs.S3FileSystem()
    table = pq.read_table(f"{store.path(*KEY)}/{part.name}".removeprefix("s3://"), filesystem=fs)
    assert table.schema.equals(SCHEMA)
    assert set(table.column("symbol").to_pylist()) == {"AAPL"}


def test_threads_racing_on_one_series_lose_and_double_nothing(s3_url: str) -> None:
    store = ObjectParquetStore(s3_url, max_parts=6)
    per_thread, threads_n = 12, 4
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            own = ObjectParquetStore(s3_url, max_parts=6)
            for i in range(per_thread):
                start = (i * threads_n + t) * H  # interleaved hours: every commit overlaps others' ranges
                own.write(*KEY, [(start, float(t), 2.0, 0.5, 1.0, float(i))], (start, start + H))
        except BaseException as e:  # noqa: BLE001 (re-raised by the test below)
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,), name=f"writer-{t}") for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got = store.read(*KEY)
    assert [b[0] for b in got] == [i * H for i in range(per_thread * threads_n)]
    assert store.coverage(*KEY) == [(0, per_thread * threads_n * H)]
    assert store.row_count(*KEY) == per_thread * threads_n


WRITER = """
import sys
from ktrdr_collect.storage.object_store import ObjectParquetStore
url, t, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = ObjectParquetStore(url, max_parts=6)
for i in range(n):
    start = (i * k + t) * 3600
    store.write("demo", "1h", "AAPL", [(start, float(t), 2.0, 0.5, 1.0, float(i))], (start, start + 3600))
print(sum(store.requests.values()))
"""


def test_processes_racing_on_one_series_lose_and_double_nothing(s3_url: str) -> None:
    n, k = 10, 3
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, s3_url, str(t), str(n), str(k)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for t in range(k)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    store = ObjectParquetStore(s3_url)
    assert [b[0] for b in store.read(*KEY)] == [i * H for i in range(n * k)]
    assert store.coverage(*KEY) == [(0, n * k * H)]


class CrashAt(Exception):
    pass


def crashing(store: ObjectParquetStore, op: str, when: int) -> None:
    """Make the ``when``-th request ``op`` of ``store`` fail as a crash would (nothing after it runs)."""
    seen = {"n": 0}
    real = store._call

    def call(name: str, **kwargs: Any) -> Any:
        if name == "put_object" and op == "manifest" and kwargs["Key"].endswith("_manifest.json"):
            seen["n"] += 1
            if seen["n"] == when:
                raise CrashAt(name)
        return real(name, **kwargs)

    store._call = call  # type: ignore[method-assign]


def test_a_crash_before_the_manifest_commit_leaves_the_old_state(s3_url: str) -> None:
    store = ObjectParquetStore(s3_url)
    store.write(*KEY, bars(0, 5), (0, 5 * H))
    before = (store.read(*KEY), store.coverage(*KEY))
    crashed = ObjectParquetStore(s3_url)
    crashing(crashed, "manifest", 1)  # the part is uploaded, the commit never happens
    with pytest.raises(CrashAt):
        crashed.write(*KEY, bars(3 * H, 5, 9.0), (3 * H, 8 * H))
    assert (store.read(*KEY), store.coverage(*KEY)) == before  # readers see the old state, whole
    assert len(store.manifest(*KEY).parts) == 1
    # the orphan part is garbage: swept once old enough, never while young
    assert store.sweep(*KEY, older_than_s=3600) == []
    gone = store.sweep(*KEY, older_than_s=-1)
    assert len(gone) == 1 and "part-" in gone[0]
    assert (store.read(*KEY), store.coverage(*KEY)) == before
    # the retried write (a new unique part) lands once
    store.write(*KEY, bars(3 * H, 5, 9.0), (3 * H, 8 * H))
    got = store.read(*KEY)
    assert [b[0] for b in got] == [i * H for i in range(8)] and got[3][1] == 9.0


def test_a_put_that_landed_but_answered_412_on_retry_keeps_its_part(s3_url: str) -> None:
    """botocore retries a put whose answer was lost; the retry fails its If-Match because the first
    try landed. The write must see that and keep its part (deleting it would lose the bars)."""
    store = ObjectParquetStore(s3_url)
    store.write(*KEY, bars(0, 2), (0, 2 * H))
    real = store._put

    def put(url: str, data: bytes, etag: str | None = None, create: bool = False) -> None:
        real(url, data, etag, create)
        if url.endswith("_manifest.json"):
            raise Conflict(url)  # landed, then "failed"

    store._put = put  # type: ignore[method-assign]
    assert store.write(*KEY, bars(2 * H, 2, 5.0), (2 * H, 4 * H)) == 2
    fresh = ObjectParquetStore(s3_url)
    assert [b[0] for b in fresh.read(*KEY)] == [0, H, 2 * H, 3 * H]
    assert fresh.coverage(*KEY) == [(0, 4 * H)]


def test_a_conflict_redoes_the_merge_on_the_new_state(s3_url: str) -> None:
    a, b = ObjectParquetStore(s3_url), ObjectParquetStore(s3_url)
    a.write(*KEY, bars(0, 4), (0, 4 * H))
    real = a._put
    done = {"other": False}

    def put(url: str, data: bytes, etag: str | None = None, create: bool = False) -> None:
        if url.endswith("_manifest.json") and not done["other"]:
            done["other"] = True
            b.write(*KEY, bars(2 * H, 4, 50.0), (2 * H, 6 * H))  # b commits between a's read and a's put
        real(url, data, etag, create)

    a._put = put  # type: ignore[method-assign]
    a.write(*KEY, bars(5 * H, 3, 80.0), (5 * H, 8 * H))
    got = ObjectParquetStore(s3_url).read(*KEY)
    assert [x[0] for x in got] == [i * H for i in range(8)]
    assert [x[1] for x in got] == [1.0, 2.0, 50.0, 51.0, 52.0, 80.0, 81.0, 82.0]
    assert a.requests["put_object"] >= 4  # part, failed manifest, part again, manifest


def test_retired_parts_stay_readable_for_the_grace_period_then_go(s3_url: str) -> None:
    now = {"t": 1000.0}
    store = ObjectParquetStore(s3_url, clock=lambda: now["t"], grace_s=60)
    store.write(*KEY, bars(0, 3), (0, 3 * H))
    first = store.manifest(*KEY).parts[0]
    store.write(*KEY, bars(H, 3, 5.0), (H, 4 * H))  # replaces the first part
    m = store.manifest(*KEY)
    assert [n for n, _ in m.retired] == [first.name]
    assert store._get(f"{store.path(*KEY)}/{first.name}") is not None  # a slow reader can still read it
    now["t"] += 61
    store.write(*KEY, [], (10 * H, 11 * H))
    assert store.manifest(*KEY).retired == []
    assert store._get(f"{store.path(*KEY)}/{first.name}") is None


def test_set_aside_keeps_the_parts_and_forgets_the_series(s3_url: str) -> None:
    import time

    now = {"t": time.time()}
    store = ObjectParquetStore(s3_url, clock=lambda: now["t"], grace_s=60)
    store.write(*KEY, bars(0, 3), (0, 3 * H))
    where = store.set_aside(*KEY, "legacy")
    assert where is not None and where.endswith("_set_aside.legacy.json")
    assert store.read(*KEY) == [] and store.coverage(*KEY) == []
    now["t"] += 120
    store.write(*KEY, [], (10 * H, 11 * H))  # a later commit (and its sweep) deletes nothing set aside
    kept = json.loads(store._get(where)[0])  # type: ignore[index]
    assert all(store._get(f"{store.path(*KEY)}/{p['name']}") is not None for p in kept["parts"])
    assert store.sweep(*KEY, older_than_s=-1) == []


def test_a_damaged_manifest_is_refused_not_overwritten(s3_url: str) -> None:
    store = ObjectParquetStore(s3_url)
    store._put(store.coverage_path(*KEY), b"not json")
    with pytest.raises(ValueError, match="not a manifest"):
        store.write(*KEY, bars(0, 1), (0, H))
    assert store._get(store.coverage_path(*KEY))[0] == b"not json"  # type: ignore[index]


def test_the_api_collects_into_a_bucket_like_into_a_folder(s3_url: str, tmp_path: Path) -> None:
    args: dict[str, Any] = dict(start="2023-01-02", end="2023-02-01", options={"latency_ms": 0},
                                format="parquet", progress=False)
    remote = ktrdr_collect.collect(["AAPL", "MSFT"], "1h", data_dir=s3_url, **args)
    local = ktrdr_collect.collect(["AAPL", "MSFT"], "1h", data_dir=tmp_path, **args)
    assert [(r.symbol, r.candles) for r in remote] == [(r.symbol, r.candles) for r in local]
    store, disk = ObjectParquetStore(s3_url), ParquetStore(tmp_path)
    for sym in ("AAPL", "MSFT"):
        assert store.read("demo", "1h", sym) == disk.read("demo", "1h", sym)
        assert store.coverage("demo", "1h", sym) == disk.coverage("demo", "1h", sym)
    again = ktrdr_collect.collect(["AAPL", "MSFT"], "1h", data_dir=s3_url, **args)
    assert [r.requests for r in again] == [0, 0]


def test_a_second_run_reads_only_the_manifests(s3_url: str) -> None:
    from ktrdr_collect.engine.engine import ProcessingEngine
    from ktrdr_collect.providers.registry import create_provider

    def run() -> tuple[list[int], ObjectParquetStore]:
        store = ObjectParquetStore(s3_url)
        engine = ProcessingEngine(create_provider("demo", {"latency_ms": 0}), store, workers=2)
        results = engine.process_batch(["AAPL", "MSFT"], "1h", start="2023-01-02", end="2023-03-01")
        return [r.requests for r in results], store

    first, store = run()
    assert all(n > 0 for n in first) and store.requests["put_object"] > 0
    again, store = run()
    assert again == [0, 0]
    assert set(store.requests) == {"get_object"}  # manifests only: no part read, nothing written


CRASHER = """
import os, sys
from ktrdr_collect.storage.object_store import ObjectParquetStore
url, k, after = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "after"
import time
store = ObjectParquetStore(url, max_parts=3, clock=lambda: time.time() + 7200)  # 2 h on: a sweep is due
real, seen = store._call, [0]

def call(name, **kw):
    seen[0] += 1
    if seen[0] == k and not after:
        os._exit(9)
    out = real(name, **kw)
    if seen[0] == k and after:
        os._exit(9)
    return out

store._call = call
store.write("demo", "1h", "AAPL", [(t * 3600, 9.0, 9.0, 9.0, 9.0, 9.0) for t in (6, 7)], (6 * 3600, 8 * 3600))
print("done", seen[0])
"""


def test_a_process_killed_before_or_after_any_request_leaves_a_whole_state(s3_url: str) -> None:
    """A write that adds a part, compacts two into one, deletes a retired part and sweeps, killed
    before and after each of its puts and deletes: the series is always the old state or the new one,
    never between; the next write on top lands whole."""
    new_tail = [(t * H, 9.0, 9.0, 9.0, 9.0, 9.0) for t in (6, 7)]
    for k in range(1, 20):
        for when in ("before", "after"):
            url = f"{s3_url}/k{k}{when}"
            store = ObjectParquetStore(url, max_parts=3)
            for start in (0, 2, 4):
                store.write(*KEY, bars(start * H, 1), (start * H, (start + 1) * H))
            store.write(*KEY, bars(0, 1, 5.0), (0, H))  # replaces a part: one retired
            old = (store.read(*KEY), store.coverage(*KEY))
            new = (old[0] + new_tail, [(0, H), (2 * H, 3 * H), (4 * H, 5 * H), (6 * H, 8 * H)])
            r = subprocess.run([sys.executable, "-c", CRASHER, url, str(k), when], capture_output=True, text=True,
                               timeout=60)
            state = (store.read(*KEY), store.coverage(*KEY))
            if r.returncode == 0:  # fewer requests than k: the write finished
                assert state == new
                assert k > int(r.stdout.split()[1]) >= 4, r.stdout  # 2 parts, the manifest, a delete
                assert len(store.manifest(*KEY).parts) == 3
                return
            assert r.returncode == 9, r.stderr
            assert state in (old, new), (k, when, state)
            store.write(*KEY, [(9 * H, 1.0, 1.0, 1.0, 1.0, 1.0)], (9 * H, 10 * H))
            assert [b[0] for b in store.read(*KEY)] == [b[0] for b in state[0]] + [9 * H]
    raise AssertionError("the write made more requests than the test tries")


@pytest.mark.parametrize(("given", "url"), [
    ("s3://bucket/prefix", "s3://bucket/prefix"), ("s3:/bucket/prefix/", "s3://bucket/prefix"),
    (Path("s3://bucket/prefix"), "s3://bucket/prefix"), ("S3://b", "s3://b"),
    ("/data/x", None), ("data", None), ("C:/data", None), ("file:///data", None),
])
def test_urls_are_told_from_paths(given: str | Path, url: str | None) -> None:
    from ktrdr_collect.storage.urls import as_url, local_path

    assert as_url(given) == url
    assert local_path("file:///srv/data") == Path("/srv/data")


def test_check_data_dir_accepts_a_bucket_for_parquet_only(s3_url: str) -> None:
    from ktrdr_collect.planning import check_data_dir

    assert str(check_data_dir(Path(s3_url), "parquet")) == s3_url.replace("s3://", "s3:/")  # a Path's spelling
    with pytest.raises(InvalidInputError, match="--format csv needs a local folder"):
        check_data_dir(Path(s3_url), "csv")
    with pytest.raises(InvalidInputError, match="cannot use data folder s3://no-such-bucket-"):
        check_data_dir(Path("s3://no-such-bucket-ktrdr/x"), "parquet")


def test_a_commit_sweeps_orphans_once_per_grace_period(s3_url: str) -> None:
    import time

    now = {"t": time.time()}
    store = ObjectParquetStore(s3_url, clock=lambda: now["t"], grace_s=600)
    store.write(*KEY, bars(0, 2), (0, 2 * H))
    crashed = ObjectParquetStore(s3_url, clock=lambda: now["t"], grace_s=600)
    crashing(crashed, "manifest", 1)
    with pytest.raises(CrashAt):
        crashed.write(*KEY, bars(5 * H, 2), (5 * H, 7 * H))  # leaves an orphan part
    names = lambda: {i["name"].rsplit("/", 1)[-1] for i in store.fs.ls(store.path(*KEY), detail=True,  # noqa: E731
                                                                        refresh=True)}
    assert len([n for n in names() if n.startswith("part-")]) == 2
    now["t"] += 300
    store.write(*KEY, [], (10 * H, 11 * H))  # not due yet: no listing
    assert "list_objects_v2" not in store.requests
    assert len([n for n in names() if n.startswith("part-")]) == 2
    now["t"] += 400  # past the grace period since the series' first commit
    store.write(*KEY, [], (11 * H, 12 * H))
    assert store.requests["list_objects_v2"] == 1
    assert [n for n in names() if n.startswith("part-")] == [p.name for p in store.manifest(*KEY).parts]
    assert [b[0] for b in store.read(*KEY)] == [0, H]
    store.write(*KEY, [], (12 * H, 13 * H))  # swept a moment ago: not again
    assert store.requests["list_objects_v2"] == 1


def test_an_upload_older_than_half_the_grace_period_is_not_committed(s3_url: str) -> None:
    """A sweep takes unnamed parts older than the grace period for orphans: a writer that took
    longer than half of it between upload and commit uploads again instead."""
    now = {"t": 1000.0}
    store = ObjectParquetStore(s3_url, clock=lambda: now["t"], grace_s=100)
    real = store._upload
    slow = {"n": 0}

    def upload(key: tuple[str, str, str], new: list[Bar]) -> Any:
        part = real(key, new)
        slow["n"] += 1
        if slow["n"] == 1:
            now["t"] += 60  # the first upload took 60 s
        return part

    store._upload = upload  # type: ignore[method-assign]
    store.write(*KEY, bars(0, 2), (0, 2 * H))
    assert slow["n"] == 2 and store.requests["delete_object"] == 1
    assert [b[0] for b in store.read(*KEY)] == [0, H]


def test_a_reader_during_writes_sees_only_whole_states(s3_url: str) -> None:
    """Writes that merge and compact (every commit replaces parts) while a reader reads: each read
    is sorted and unique, and never has fewer bars than the one before (writes only add)."""
    writer_store = ObjectParquetStore(s3_url, max_parts=3)
    reader = ObjectParquetStore(s3_url)
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(15):
                start = ((i * 7) % 15) * H  # out of order: merges and compactions
                writer_store.write(*KEY, bars(start, 2, float(i)), (start, start + 2 * H))
        except BaseException as e:  # noqa: BLE001 (checked below)
            errors.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=write, name="writer")
    thread.start()
    seen, reads = 0, 0
    while not done.is_set() or reads == 0:
        got = [b[0] for b in reader.read(*KEY)]
        assert got == sorted(set(got))
        assert len(got) >= seen
        seen, reads = len(got), reads + 1
    thread.join()
    assert not errors
    assert [b[0] for b in reader.read(*KEY)] == [i * H for i in range(16)]
    assert reads > 1


class IgnoresConditions:
    """An S3 filesystem whose server ignores If-Match / If-None-Match (some S3-compatible ones do)."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def call_s3(self, op: str, **kwargs: Any) -> Any:
        kwargs.pop("IfMatch", None)
        kwargs.pop("IfNoneMatch", None)
        return self.fs.call_s3(op, **kwargs)


def test_check_bucket_refuses_a_server_that_ignores_conditional_writes(s3_url: str) -> None:
    import s3fs

    from ktrdr_collect.storage.object_store import check_bucket

    check_bucket(s3_url)  # moto honours them
    with pytest.raises(ValueError, match="ignores conditional writes"):
        check_bucket(s3_url, fs=IgnoresConditions(s3fs.S3FileSystem()))
    assert [p for p in s3fs.S3FileSystem().find(s3_url) if "_probe-" in p] == []  # the probes are gone
