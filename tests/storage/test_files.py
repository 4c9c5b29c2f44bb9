"""ktrdr_collect.files and every writer built on it: a full disk never loses the old file, a
symbolic link is never written through, modes never widen under umask 000.

The full-disk cases run each writer in a real subprocess under RLIMIT_FSIZE (a write past the
limit is cut short, then fails with EFBIG)."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ktrdr_collect import files
from ktrdr_collect.config import write_config
from ktrdr_collect.errors import CollectError
from ktrdr_collect.jobs.journal import StoredJournal
from ktrdr_collect.jobs.statefile import write_state
from ktrdr_collect.providers.shared_file import locked_json
from ktrdr_collect.storage.csv_store import CsvStore

REPO = Path(__file__).resolve().parents[2]
LIMIT = 4096
T0 = 1704205800  # 2024-01-02T14:30:00Z
KEY = ("demo", "1m", "AAPL")


def bars(n: int) -> list[tuple[int, float, float, float, float, float]]:
    return [(T0 + 60 * i, 100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 1000.0 + i) for i in range(n)]


# -- a full disk: each writer in a subprocess under RLIMIT_FSIZE ------------------------------------

CHILD = textwrap.dedent('''
    import errno, json, os, resource, signal, sys
    from pathlib import Path
    root, writer, limit = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    T0 = 1704205800

    def bars(n):
        return [(T0 + 60 * i, 100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 1000.0 + i) for i in range(n)]

    def write(size):
        """The writer's file, holding about `size` units of content."""
        if writer == "state":
            from ktrdr_collect.jobs.statefile import write_state
            write_state(root, {"schema": 1, "symbols": ["S%05d" % i for i in range(size)]}, durable=True)
        elif writer == "config":
            from ktrdr_collect.config import write_config
            write_config({"providers": {"demo": {"flaky_symbols": ",".join("Z%05d" % i for i in range(size))}}},
                         root / "config.toml")
        elif writer == "coverage":
            from ktrdr_collect.storage.csv_store import CsvStore
            ranges = [(T0 + 120 * i, T0 + 120 * i + 60) for i in range(size)]
            CsvStore(root)._save_coverage("demo", "1m", "AAPL", ranges)
        elif writer == "csv":
            from ktrdr_collect.storage.csv_store import CsvStore
            CsvStore(root).replace("demo", "1m", "AAPL", bars(size), [])
        elif writer == "shared":
            from ktrdr_collect.providers.shared_file import locked_json
            with locked_json(root / "shared" / "pacing.json") as shared:
                shared.save(list(range(size)))
        elif writer == "journal":
            from ktrdr_collect.jobs.journal import StoredJournal
            journal = StoredJournal(root)
            for i in range(size):
                journal.record("AAPL", (T0 + i, T0 + i + 1), 1)

    (root / "demo" / "1m" / ".ktrdr").mkdir(parents=True)
    write(20)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        write(2000)
    except Exception as e:  # an OSError, or the one-line error a command shows (config)
        print(json.dumps({"error": str(e)}))
    else:
        print(json.dumps({"error": None}))
''')

WRITTEN = {
    "state": "state.json", "config": "config.toml", "coverage": "demo/1m/.ktrdr/AAPL.coverage.json",
    "csv": "demo/1m/AAPL.csv", "shared": "shared/pacing.json", "journal": "stored",
}


def run_child(root: Path, writer: str) -> str | None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "KTRDR_COLLECT_HOME": str(root)}
    r = subprocess.run([sys.executable, "-c", CHILD, str(root), writer, str(LIMIT)], env=env, capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["error"]


def reference_bytes(tmp_path: Path, writer: str) -> bytes:
    """What the writer's file holds after the first, small write (made without a limit)."""
    root = tmp_path / "reference"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "KTRDR_COLLECT_HOME": str(root)}
    script = CHILD.replace("resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))", "sys.exit(0)")
    r = subprocess.run([sys.executable, "-c", script, str(root), writer, str(LIMIT)], env=env, capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return (root / WRITTEN[writer]).read_bytes()


@pytest.mark.parametrize("writer", ["state", "config", "coverage", "csv", "shared"])
def test_a_full_disk_leaves_the_old_file_and_no_temp(tmp_path: Path, writer: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    error = run_child(root, writer)
    assert error is not None and "File too large" in error, error
    path = root / WRITTEN[writer]
    assert path.read_bytes() == reference_bytes(tmp_path, writer)  # the old content, whole
    leftovers = [str(p) for p in root.rglob("*") if p.name.startswith(".") and p.is_file()]
    assert leftovers == []


def test_a_full_disk_never_leaves_a_torn_journal_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    error = run_child(root, "journal")
    assert error is not None and "File too large" in error, error
    lines = (root / "stored").read_bytes().splitlines(keepends=True)
    assert lines and all(line.endswith(b"\n") and len(json.loads(line)) == 4 for line in lines)
    assert len(StoredJournal(root).ranges()) == 1


# -- atomic_write ----------------------------------------------------------------------------------


def test_atomic_write_replaces_and_removes_its_temp_on_any_error(tmp_path: Path) -> None:
    path = tmp_path / "file"
    files.atomic_write(path, b"one", mode=0o600, durable=True)
    files.atomic_write(path, b"two", mode=0o600, durable=False)
    assert path.read_bytes() == b"two" and os.listdir(tmp_path) == ["file"]
    folder = tmp_path / "folder"
    (folder / "inside").mkdir(parents=True)
    with pytest.raises(OSError):  # a rename over a non-empty folder fails after the temp is written
        files.atomic_write(folder, b"x", mode=0o600, durable=True)
    assert sorted(os.listdir(tmp_path)) == ["file", "folder"]


def test_temp_names_are_random_and_never_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (used.append(os.path.basename(a)), real_replace(a, b))[1])
    for _ in range(3):
        files.atomic_write(tmp_path / "state.json", b"{}", mode=0o600, durable=False)
    assert len(set(used)) == 3 and all(n.startswith(".state.json.") and n.endswith(".tmp") for n in used)


def test_old_predictable_temp_names_are_never_used(home: Path, tmp_path: Path) -> None:
    """Links planted at the temp names writes used to use (`.state.json.<pid>.tmp`, `.config.toml.tmp`,
    `.AAPL.coverage.json.tmp`): every write succeeds and the targets keep their bytes."""
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    job = home / "jobs" / "job"
    job.mkdir(parents=True)
    store = CsvStore(home / "data")
    meta = home / "data" / "demo" / "1m" / ".ktrdr"
    meta.mkdir(parents=True)
    for link in (job / f".state.json.{os.getpid()}.tmp", home / ".config.toml.tmp", meta / ".AAPL.coverage.json.tmp",
                 home / "data" / "demo" / "1m" / ".AAPL.csv.tmp"):
        link.symlink_to(target)
    write_state(job, {"schema": 1})
    write_config({"workers": 2}, home / "config.toml")
    store.write(*KEY, bars(3), (T0, T0 + 180))
    store.write(*KEY, bars(1), (T0, T0 + 60))  # before the last bar: a rewrite of the data file
    assert target.read_bytes() == b"precious"
    assert store.read(*KEY) == bars(3)


# -- links where the tool writes ----------------------------------------------------------------------


def _state(home: Path) -> Callable[[], None]:
    return lambda: write_state(home / "jobs" / "job", {"schema": 1})


def _config(home: Path) -> Callable[[], None]:
    return lambda: write_config({"workers": 2}, home / "config.toml")


def _store(home: Path) -> Callable[[], None]:
    return lambda: CsvStore(home / "data").write(*KEY, bars(3), (T0, T0 + 180))


def _journal(home: Path) -> Callable[[], None]:
    return lambda: StoredJournal(home / "jobs" / "job").record("AAPL", (T0, T0 + 60), 1)


def _shared(home: Path) -> Callable[[], None]:
    def save() -> None:
        with locked_json(home / "shared" / "pacing" / "p.json") as shared:
            shared.save([1.0])

    return save


LINKS = {  # where the link is planted (relative to home) -> the writer that must refuse it
    "jobs/job/state.json": _state,
    "config.toml": _config,
    "data/demo/1m/AAPL.csv": _store,
    "data/demo/1m/.ktrdr/AAPL.coverage.json": _store,
    "data/demo/1m/.ktrdr/AAPL.lock": _store,
    "jobs/job/stored": _journal,
    "shared/pacing/p.json": _shared,
    "shared/pacing/p.json.lock": _shared,
}


@pytest.mark.parametrize("where", list(LINKS))
@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_a_link_where_the_tool_writes_is_refused(home: Path, tmp_path: Path, where: str, dangling: bool) -> None:
    target = tmp_path / "outside" / "victim"
    target.parent.mkdir()
    if not dangling:
        target.write_bytes(b"precious\n")
        os.chmod(target, 0o640)
    link = home / where
    link.parent.mkdir(parents=True, exist_ok=True)
    (home / "jobs" / "job").mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    with pytest.raises(OSError) as info:
        LINKS[where](home)()
    assert str(info.value) == f"refusing to write through a symbolic link: {link}"
    assert isinstance(info.value, CollectError) and info.value.errno == errno.ELOOP
    assert link.is_symlink()
    if dangling:
        assert not target.exists()
    else:
        assert target.read_bytes() == b"precious\n" and stat.S_IMODE(target.stat().st_mode) == 0o640


@pytest.mark.parametrize("where", ["data/demo", "data/demo/1m", "data/demo/1m/.ktrdr"])
def test_a_link_at_a_folder_of_the_data_dir_is_refused(home: Path, tmp_path: Path, where: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = home / where
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere)
    with pytest.raises(files.UnsafePathError) as info:
        _store(home)()
    assert str(info.value) == f"refusing to write through a symbolic link: {link}"
    assert os.listdir(elsewhere) == []


def test_the_data_dir_itself_may_be_a_link(home: Path, tmp_path: Path) -> None:
    real = tmp_path / "disk" / "data"
    real.mkdir(parents=True)
    (tmp_path / "data-link").symlink_to(real)
    store = CsvStore(tmp_path / "data-link")
    store.write(*KEY, bars(3), (T0, T0 + 180))
    assert (real / "demo" / "1m" / "AAPL.csv").is_file()


def test_open_nofollow_refuses_a_fifo_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for flags in (os.O_RDWR | os.O_CREAT, os.O_WRONLY | os.O_APPEND):
        with pytest.raises(OSError):
            files.open_nofollow(fifo, flags, 0o600)


def test_make_dirs_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="a"):
        files.make_dirs(tmp_path / "a" / "b", 0o755, root=tmp_path)
    with pytest.raises(ValueError, match="is not inside"):
        files.make_dirs(tmp_path / "x", 0o755, root=tmp_path / "y")


# -- modes -------------------------------------------------------------------------------------------


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_umask_000_never_widens_a_mode(tmp_path: Path, umask_000: None) -> None:
    files.make_dirs(tmp_path / "root" / "a" / "b", 0o755, root=tmp_path / "root")
    files.atomic_write(tmp_path / "root" / "a" / "f", b"x", mode=0o644, durable=False)
    os.close(files.open_nofollow(tmp_path / "root" / "a" / "g", os.O_WRONLY | os.O_CREAT, 0o600))
    got = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in tmp_path.rglob("*")}
    assert got == {"root": "0o755", "root/a": "0o755", "root/a/b": "0o755", "root/a/f": "0o644", "root/a/g": "0o600"}


def test_a_stricter_umask_is_honoured(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        files.atomic_write(tmp_path / "f", b"x", mode=0o644, durable=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o600


def test_store_files_under_umask_000(tmp_path: Path, umask_000: None) -> None:
    store = CsvStore(tmp_path / "data")
    store.write(*KEY, bars(3), (T0, T0 + 180))
    store.write(*KEY, bars(1), (T0, T0 + 60))  # a rewrite
    got = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert got == {
        "data": 0o755, "data/demo": 0o755, "data/demo/1m": 0o755, "data/demo/1m/.ktrdr": 0o755,
        "data/demo/1m/.ktrdr/AAPL.lock": 0o644, "data/demo/1m/.ktrdr/AAPL.coverage.json": 0o644,
        "data/demo/1m/AAPL.csv": 0o644,
    }


@pytest.mark.parametrize("kernel", [True, False])
def test_atomic_write_in_parts_copies_spans_of_another_file(tmp_path: Path, kernel: bool,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A file rewritten around a change: bytes and spans of the old file (copied by the kernel, or
    read 1 MiB at a time where copy_file_range is missing), in order; a span past the old file's
    end fails and leaves the target as it was."""
    if not kernel:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    old = tmp_path / "old"
    old.write_bytes(b"0123456789" * 300_000)  # 3 MB: more than one copy chunk
    target = tmp_path / "new"
    target.write_bytes(b"before")
    with old.open("rb") as f:
        files.atomic_write(target, [b"head,", files.FileSpan(f.fileno(), 5, 2_000_000), b",tail",
                                    files.FileSpan(f.fileno(), 0, 3)], mode=0o644, durable=True)
        assert target.read_bytes() == b"head," + old.read_bytes()[5:2_000_005] + b",tail012"
        with pytest.raises(OSError):
            files.atomic_write(target, [files.FileSpan(f.fileno(), 2_999_000, 5000)], mode=0o644, durable=False)
    assert target.read_bytes().startswith(b"head,5678")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old"]  # no temp left
