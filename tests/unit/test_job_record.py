"""The typed job record: the state machine its methods enforce, the public key set, old folders."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ktrdr_collect.cli.main import app
from ktrdr_collect.errors import InvalidJobStateError
from ktrdr_collect.jobs import model
from ktrdr_collect.jobs.record import (
    CONTRACT_KEYS,
    PUBLIC_ADDITIONS,
    SPEC_FILE,
    JobSpec,
    JobState,
    SymbolEntry,
    new_state,
    read_spec,
)
from ktrdr_collect.jobs.statefile import read_state, write_state

NOW = "2024-03-01T00:00:00.000Z"
SPEC = JobSpec(symbols=("AAPL", "MSFT"), timeframe="1d", start="2024-01-01T00:00:00Z", end="2024-02-01T00:00:00Z",
               provider="demo", options={"latency_ms": 0}, data_dir="/data", synthetic=True)


def state_in(status: str) -> JobState:
    state = new_state("j1", SPEC, NOW, seq=1, queued=False)
    state.status = status  # set up as found on disk
    return state


STEPS: dict[str, tuple[str, Callable[[JobState], None]]] = {
    "begin": (model.RUNNING, lambda s: s.begin(42, NOW)),
    "pause": (model.PAUSED, lambda s: s.pause()),
    "unpause": (model.RUNNING, lambda s: s.unpause()),
    "finish": (model.COMPLETED, lambda s: s.finish(NOW)),
    "cancel": (model.CANCELLED, lambda s: s.cancel(NOW)),
    "fail": (model.FAILED, lambda s: s.fail("boom", NOW)),
    "interrupt": (model.INTERRUPTED, lambda s: s.interrupt("signal 15")),
}
STATUSES = (model.PENDING, model.RUNNING, model.PAUSED, model.COMPLETED, model.FAILED, model.CANCELLED,
            model.INTERRUPTED)


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("step", sorted(STEPS))
def test_every_step_from_every_status_is_allowed_or_refused_by_the_state_machine(status: str, step: str) -> None:
    target, do = STEPS[step]
    state = state_in(status)
    state.symbols_completed = 1  # so `finish` means completed
    allowed = model.can_transition(status, target) or (step == "interrupt" and status == model.INTERRUPTED)
    if step == "begin":  # a runner (holding the lock) takes over whatever an earlier runner left unfinished
        allowed = status not in model.FINISHED
    if allowed:
        do(state)
        assert state.status == target
    else:
        with pytest.raises(InvalidJobStateError):
            do(state)
        assert state.status == status  # a refused step changes nothing


def test_steps_set_their_own_timestamps_and_bookkeeping() -> None:
    state = state_in(model.PENDING)
    state.begin(42, "2024-03-01T00:00:01.000Z")
    assert (state.started_at, state.pid, state.runs, state.error) == ("2024-03-01T00:00:01.000Z", 42, 1, None)
    state.interrupt("stopped by signal 15")
    assert state.error == "stopped by signal 15" and state.completed_at is None and state.eta_s is None
    state.restart("2024-03-01T00:00:02.000Z")
    assert state.status == model.PENDING and state.error is None
    state.begin(43, "2024-03-01T00:00:03.000Z")
    assert state.started_at == "2024-03-01T00:00:01.000Z" and state.runs == 2  # the first start stays
    state.symbols_completed, state.symbols_failed = 0, 2
    state.finish("2024-03-01T00:00:04.000Z")
    assert state.status == model.FAILED  # no series succeeded
    assert state.completed_at == state.updated_at == "2024-03-01T00:00:04.000Z" and state.eta_s == 0.0


def test_cancel_marks_unfinished_series_and_a_dead_runner_can_be_restarted() -> None:
    state = state_in(model.RUNNING)
    state.symbols = [SymbolEntry("A", "completed"), SymbolEntry("B", "running", "fetching", requests=1),
                     SymbolEntry("C")]
    state.cancel(NOW)
    assert [(e.status, e.label) for e in state.symbols] == [
        ("completed", "completed"), ("cancelled", "cancelled"), ("cancelled", "not started")]
    dead = state_in(model.RUNNING)  # its runner died: every reader sees it interrupted
    dead.restart(NOW)
    assert dead.status == model.PENDING
    with pytest.raises(InvalidJobStateError):
        state_in(model.COMPLETED).restart(NOW)
    with pytest.raises(InvalidJobStateError):
        state_in(model.RUNNING).dequeue(NOW)


def test_public_keys_are_exactly_the_contract_and_the_documented_additions() -> None:
    state = state_in(model.PENDING)
    state.retry_of, state.control_acks, state.pid = "j0", [{"id": "x"}], 7
    view = state.view(alive=False, queue_ahead=2)
    view.health = {"word": "healthy", "reasons": []}
    out = view.public()
    assert set(out) == set(CONTRACT_KEYS) | set(PUBLIC_ADDITIONS)
    assert set(out["symbols"][0]) == {"symbol", "timeframe", "status", "stage", "segments_done", "segments_total",
                                      "candles", "error", "requests"}
    plain = state_in(model.COMPLETED).public()  # additions that do not apply are left out
    assert set(plain) == set(CONTRACT_KEYS) | {"error", "exit_code"}
    assert plain["exit_code"] == 0 and plain["timeframes"] == ["1d"]


def test_unknown_keys_survive_a_read_and_write(tmp_path: Path) -> None:
    state = state_in(model.RUNNING)
    raw = {**state.to_json(), "from_the_future": {"x": 1}}
    (tmp_path / "state.json").write_text(json.dumps(raw))
    again = read_state(tmp_path)
    write_state(tmp_path, again)
    assert json.loads((tmp_path / "state.json").read_text())["from_the_future"] == {"x": 1}
    assert "from_the_future" not in again.public()


def test_the_spec_is_written_once_and_read_back(tmp_path: Path) -> None:
    SPEC.write(tmp_path)
    assert read_spec(tmp_path, state_in(model.PENDING)) == SPEC
    assert (tmp_path / SPEC_FILE).stat().st_mode & 0o077 == 0


def test_an_older_folder_carries_its_spec_in_its_state(tmp_path: Path) -> None:
    old = {**state_in(model.PENDING).to_json(), "options": {"latency_ms": 5}, "data_dir": "/old", "format": "parquet",
           "workers": 2, "earliest": True, "synthetic": True}
    spec = read_spec(tmp_path, JobState.from_json(old))
    assert (spec.symbols, spec.options, spec.data_dir, spec.format, spec.workers, spec.earliest) == (
        ("AAPL", "MSFT"), {"latency_ms": 5}, "/old", "parquet", 2, True)


def test_an_interrupted_job_written_by_an_older_version_resumes(home: Path) -> None:
    runner = CliRunner()
    window = ["--start", "2023-01-02", "--end", "2023-02-01", "-o", "latency_ms=0", "-q"]
    assert runner.invoke(app, ["start", "AAPL", *window]).exit_code == 0
    job_id = json.loads(runner.invoke(app, ["status", "last", "--json"]).stdout)["id"]
    folder = home / "jobs" / job_id
    spec = json.loads((folder / SPEC_FILE).read_text())
    (folder / SPEC_FILE).unlink()
    state = json.loads((folder / "state.json").read_text())
    state.update(status="running", completed_at=None, options=spec["options"], data_dir=spec["data_dir"],
                 format=spec["format"], workers=spec["workers"], earliest=False)
    for entry in state["symbols"]:
        del entry["timeframe"]
        entry["status"] = "pending"
    del state["timeframes"]
    (folder / "state.json").write_text(json.dumps(state))
    assert json.loads(runner.invoke(app, ["status", job_id, "--json"]).stdout)["status"] == "interrupted"
    assert runner.invoke(app, ["resume", job_id]).exit_code == 0
    assert runner.invoke(app, ["wait", job_id, "-q"]).exit_code == 0
    done = json.loads(runner.invoke(app, ["status", job_id, "--json"]).stdout)
    assert done["status"] == "completed" and done["symbols"][0]["timeframe"] == "1d"
    assert done["requests"] == state["requests"]  # nothing fetched again: the data was stored


def test_a_unique_job_name_is_a_job_reference(home: Path) -> None:
    runner = CliRunner()
    window = ["--start", "2023-01-02", "--end", "2023-02-01", "-o", "latency_ms=0", "-q"]
    for name in ("nightly", "weekly", "weekly"):
        assert runner.invoke(app, ["start", "AAPL", *window, "--name", name]).exit_code == 0
    listed = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    nightly = next(j["id"] for j in listed if j["name"] == "nightly")
    r = runner.invoke(app, ["status", "nightly", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["id"] == nightly
    r = runner.invoke(app, ["status", "weekly"])
    assert r.exit_code == 1 and "Job name 'weekly' is not unique" in r.stderr
    assert runner.invoke(app, ["status", "monthly"]).exit_code == 1
