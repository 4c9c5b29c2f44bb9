"""Fault injection, end to end (real `collect` processes): full disks at many sizes, symbolic links
planted where the tool writes, and a umask of 000 (issue 15: "Nothing lost, nobody in").

RLIMIT_FSIZE stands in for a full disk: a write past the limit is cut short, then fails with EFBIG
(SIGXFSZ is ignored, as the existing full-disk test does)."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
from e2e_helpers import (
    COLLECT,
    check_csv,
    collect,
    env_for,
    job_diagnostics,
    job_folders,
    poll_until,
    runner_gone,
    runner_pid,
    start_detached,
    status_json,
    wait_for_requests,
    wait_rc,
)

SYMBOLS = [f"S{i:02d}" for i in range(1, 21)]
WINDOW = ["-t", "1d", "--start", "2021-01-01", "--end", "2023-01-01", "-o", "latency_ms=0", "-o", "max_bars=100"]
START = ["start", *SYMBOLS, *WINDOW, "-w", "2", "--json"]
# The config below is ~2.8 then ~3.9 KiB; this job's state.json is ~4,510 bytes when created and
# grows to ~4,560 as it runs (so 4,520-4,550 fail the runner's writes, not the creation); its
# journal grows to ~4.4 KiB, its log to ~1.7 KiB and each CSV to ~29 KiB.
SIZES = [2048, 3072, 4096, 4520, 4540, 4550, 5120, 8192, 12288, 16384, 24576, 1 << 20]
SYMLINK_REFUSED = "refusing to write through a symbolic link: "


def flaky_list(n: int) -> str:
    """A long, harmless provider option (symbols this job never asks for) to make config.toml big."""
    return ",".join(f"ZZ{i:04d}" for i in range(n))


def run_capped(home: Path, args: list[str], limit: int) -> subprocess.CompletedProcess[str]:
    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([*COLLECT, *args], env=env_for(home), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, preexec_fn=cap)


def data_files(home: Path) -> dict[str, bytes]:
    folder = home / "data" / "demo" / "1d"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.csv"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    home = tmp_path_factory.mktemp("reference") / "home"
    r = collect(home, *START)
    assert r.returncode == 0, r.stderr
    files = data_files(home)
    assert sorted(files) == [f"{s}.csv" for s in SYMBOLS]
    return files


def assert_nothing_corrupt(home: Path) -> None:
    """Every file the tool replaces parses; the journal has no torn line; no temp file is left."""
    for folder in job_folders(home):
        state = folder / "state.json"
        if state.exists():
            assert isinstance(json.loads(state.read_bytes())["schema"], int), state
        journal = folder / "stored"
        if journal.exists():
            for line in journal.read_bytes().splitlines():
                assert len(json.loads(line)) == 4, (journal, line)
    meta = home / "data" / "demo" / "1d" / ".ktrdr"
    for coverage in meta.glob("*.coverage.json") if meta.is_dir() else []:
        assert json.loads(coverage.read_bytes())["version"] == 1, coverage
    tomllib.loads((home / "config.toml").read_text())
    for csv in data_files(home):
        check_csv(home / "data" / "demo" / "1d" / csv)
    leftovers = [str(p) for p in home.rglob("*.tmp")]
    assert not leftovers, leftovers


def resume_interrupted(home: Path) -> None:
    for folder in job_folders(home):
        if not (folder / "state.json").exists():
            continue  # the job could not even be created: nothing to resume
        if status_json(home, folder.name)["status"] == "interrupted":
            r = collect(home, "resume", folder.name)
            assert r.returncode == 0, r.stderr
            assert wait_rc(home, folder.name) in (0, 3, 4), job_diagnostics(home)


@pytest.mark.parametrize("limit", SIZES)
def test_a_full_disk_never_corrupts_and_loses_nothing(home: Path, reference: dict[str, bytes], limit: int) -> None:
    old, new = flaky_list(400), flaky_list(560)
    assert collect(home, "config", "set", "providers.demo.flaky_symbols", old).returncode == 0
    r = run_capped(home, ["config", "set", "providers.demo.flaky_symbols", new], limit)
    assert r.returncode in (0, 1), r.stderr
    config = tomllib.loads((home / "config.toml").read_text())
    assert config["providers"]["demo"]["flaky_symbols"] == (new if r.returncode == 0 else old)
    assert r.returncode == 0 or r.stderr.startswith("Error: cannot write config"), r.stderr
    assert collect(home, "config", "unset", "providers.demo.flaky_symbols").returncode == 0
    r = run_capped(home, START, limit)
    assert r.returncode in (0, 1, 3, 4, 6), r.stderr
    assert_nothing_corrupt(home)
    # space is back: the interrupted job resumes, a new run fetches what is missing
    resume_interrupted(home)
    r = collect(home, *START)
    assert r.returncode == 0, (r.stderr, job_diagnostics(home))
    assert data_files(home) == reference
    assert_nothing_corrupt(home)


# -- symbolic links ------------------------------------------------------------------------------


def plant(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def victim(folder: Path, name: str, content: bytes = b"precious\n") -> tuple[Path, bytes, int]:
    """A file outside the tool's area that a planted link points at: its bytes and mode must stay."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    os.chmod(path, 0o600)
    return path, content, 0o600


def assert_untouched(target: tuple[Path, bytes, int]) -> None:
    path, content, mode = target
    assert path.read_bytes() == content, path
    assert stat.S_IMODE(path.stat().st_mode) == mode, path


def finished_symbols(stdout: str) -> dict[str, dict]:  # type: ignore[type-arg]
    final = json.loads(stdout.splitlines()[-1])
    assert final["event"] == "finished", final
    return {s["symbol"]: s for s in final["symbols"]}


def test_links_in_the_data_dir_are_refused_and_their_targets_untouched(home: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    data = home / "data" / "demo" / "1d"
    meta = data / ".ktrdr"
    csv = victim(outside, "csv")
    coverage = victim(outside, "coverage")
    temp = victim(outside, "temp")
    plant(data / "AAA.csv", csv[0])
    plant(meta / "BBB.coverage.json", coverage[0])
    plant(meta / "CCC.lock", outside / "created-by-lock")  # dangling: following it would create it
    plant(meta / ".DDD.coverage.json.tmp", temp[0])  # the temp name writes used to be predictable
    r = collect(home, "start", "AAA", "BBB", "CCC", "DDD", "-t", "1d", "--days", "30", "-o", "latency_ms=0",
                "--json")
    assert r.returncode == 3, r.stderr
    symbols = finished_symbols(r.stdout)
    for symbol, link in (("AAA", data / "AAA.csv"), ("BBB", meta / "BBB.coverage.json"), ("CCC", meta / "CCC.lock")):
        assert symbols[symbol]["status"] == "failed", symbols[symbol]
        assert symbols[symbol]["error"] == f"cannot store data: {SYMLINK_REFUSED}{link}"
        assert link.is_symlink()
    assert symbols["DDD"]["status"] == "completed"  # a link at an old temp name is never used
    for target in (csv, coverage, temp):
        assert_untouched(target)
    assert not (outside / "created-by-lock").exists()


def test_a_link_in_a_parquet_dataset_or_a_folder_is_refused(home: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    outside = tmp_path / "outside"
    part = victim(outside / "dataset", "part-20000103T000000Z-20000103T000000Z.parquet", b"PAR1 not mine")
    plant(home / "data" / "demo" / "1d" / "AAA.parquet", outside / "dataset")
    r = collect(home, "start", "AAA", "-t", "1d", "--days", "30", "--format", "parquet", "-o", "latency_ms=0",
                "--json")
    assert r.returncode == 4, r.stderr
    link = home / "data" / "demo" / "1d" / "AAA.parquet"
    assert finished_symbols(r.stdout)["AAA"]["error"] == f"cannot store data: {SYMLINK_REFUSED}{link}"
    assert sorted(os.listdir(outside / "dataset")) == [part[0].name]
    assert_untouched(part)
    # a link at a folder of the data dir (the timeframe folder of another data dir)
    other = tmp_path / "other-data"
    plant(other / "demo" / "1h", outside / "elsewhere")
    (outside / "elsewhere").mkdir()
    r = collect(home, "start", "BBB", "-t", "1h", "--days", "10", "--data-dir", str(other), "-o", "latency_ms=0",
                "--json")
    assert r.returncode == 4, r.stderr
    assert finished_symbols(r.stdout)["BBB"]["error"] == f"cannot store data: {SYMLINK_REFUSED}{other / 'demo' / '1h'}"
    assert os.listdir(outside / "elsewhere") == []


def test_a_link_at_the_config_file_is_refused(home: Path, tmp_path: Path) -> None:
    config = victim(tmp_path / "outside", "config.toml", b'workers = 2\n')
    plant(home / "config.toml", config[0])
    r = collect(home, "config", "set", "workers", "3")
    assert r.returncode == 1
    assert r.stderr.strip() == f"Error: {SYMLINK_REFUSED}{home / 'config.toml'}"
    assert_untouched(config)
    # the temp name config writes used to use, planted: never used, its target untouched
    (home / "config.toml").unlink()
    temp = victim(tmp_path / "outside", "temp")
    plant(home / ".config.toml.tmp", temp[0])
    assert collect(home, "config", "set", "workers", "3").returncode == 0
    assert tomllib.loads((home / "config.toml").read_text()) == {"workers": 3}
    assert_untouched(temp)


def interrupted_job(home: Path) -> str:
    """A job whose runner was SIGKILLed after its first request."""
    job_id = start_detached(home, "AAA", "BBB", "-t", "1h", "--start", "2022-01-01", "--end", "2023-01-01",
                            "-o", "latency_ms=100", "-o", "max_bars=100", "-w", "1")
    wait_for_requests(home, job_id)
    pid = runner_pid(home, job_id)
    os.kill(pid, signal.SIGKILL)
    poll_until(lambda: runner_gone(home, job_id, pid), 5, what="the killed runner to be gone")
    assert status_json(home, job_id)["status"] == "interrupted"
    return job_id


def swap_for_link(path: Path, outside: Path) -> tuple[Path, bytes, int]:
    """Move the tool's file out of the area and leave a link to it in its place."""
    target = outside / path.name
    outside.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(b"")
    os.replace(path, target)
    path.symlink_to(target)
    return target, target.read_bytes(), stat.S_IMODE(target.stat().st_mode)


def restore(path: Path, target: tuple[Path, bytes, int]) -> None:
    path.unlink()
    os.replace(target[0], path)


def test_links_in_a_job_folder_are_refused_and_their_targets_untouched(home: Path, tmp_path: Path) -> None:
    job_id = interrupted_job(home)
    folder = home / "jobs" / job_id
    # cancel writes the state: refused, one line naming the link; the job is as it was
    state = swap_for_link(folder / "state.json", tmp_path / "outside-state")
    r = collect(home, "cancel", job_id)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == f"Error: {SYMLINK_REFUSED}{folder / 'state.json'}"
    assert_untouched(state)
    restore(folder / "state.json", state)
    assert status_json(home, job_id)["status"] == "interrupted"
    # the resumed runner refuses the journal of what was stored, and says so per symbol
    journal = swap_for_link(folder / "stored", tmp_path / "outside-journal")
    r = collect(home, "resume", job_id)
    assert r.returncode == 0, r.stderr
    assert wait_rc(home, job_id) == 4, job_diagnostics(home)
    symbols = status_json(home, job_id)["symbols"]
    assert [s["error"] for s in symbols] == [f"cannot store data: {SYMLINK_REFUSED}{folder / 'stored'}"] * 2
    assert_untouched(journal)


# -- modes ---------------------------------------------------------------------------------------


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


def test_umask_000_gives_data_0644_0755_and_private_job_files(home: Path) -> None:
    pytest.importorskip("pyarrow")
    env = env_for(home)
    for args in (["config", "set", "workers", "2"],
                 ["start", "AAA", "-t", "1d", "--days", "30", "-o", "latency_ms=0", "-q"],
                 ["start", "BBB", "-t", "1d", "--days", "30", "-o", "latency_ms=0", "-q", "--format", "parquet"]):
        r = subprocess.run([*COLLECT, *args], env=env, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL, preexec_fn=lambda: os.umask(0))
        assert r.returncode == 0, r.stderr
    data = modes(home / "data")
    assert (home / "data" / "demo" / "1d" / "BBB.parquet").is_dir() and len(data) >= 8
    for name, mode in data.items():
        is_dir = (home / "data" / name).is_dir()
        assert mode == (0o755 if is_dir else 0o644), (name, oct(mode))
    assert stat.S_IMODE((home / "jobs").stat().st_mode) == 0o700
    for folder in job_folders(home):
        for name, mode in modes(folder).items():
            is_dir = (folder / name).is_dir()
            assert mode == (0o700 if is_dir else 0o600), (folder.name, name, oct(mode))
    assert stat.S_IMODE((home / "config.toml").stat().st_mode) == 0o600
