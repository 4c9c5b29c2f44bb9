"""How a Dask task follows its batch's control variable (engine/dask_executor.py), with an injected
clock and a stand-in for the Variable: no cluster needed."""

from __future__ import annotations

from typing import Any

from ktrdr_collect.engine.cancellation import CancellationToken, PauseGate
from ktrdr_collect.engine.dask_executor import OWNER_TIMEOUT_S, _Follower, scheduler_address, store_location


class FakeVariable:
    def __init__(self) -> None:
        self.value: Any = ["run", 1]
        self.fail = False

    def get(self, timeout: float) -> Any:
        if self.fail:
            raise TimeoutError("deleted")
        return self.value


def test_pause_resume_and_cancel_follow_the_owner() -> None:
    var, gate, token, now = FakeVariable(), PauseGate(), CancellationToken(), [0.0]
    follower = _Follower(var, gate, token, clock=lambda: now[0])
    follower.apply()
    assert not gate.is_paused and not token.is_cancelled
    var.value = ["pause", 2]
    follower.apply()
    assert gate.is_paused
    var.value = ["run", 3]
    follower.apply()
    assert not gate.is_paused
    var.value = ["cancel", 4]
    follower.apply()
    assert token.is_cancelled


def test_a_task_whose_owner_died_cancels_itself() -> None:
    var, gate, token, now = FakeVariable(), PauseGate(), CancellationToken(), [0.0]
    follower = _Follower(var, gate, token, clock=lambda: now[0])
    follower.apply()
    for beat in range(2, 40):  # a live owner: the beat moves, however long the task runs
        now[0] += 0.5
        var.value = ["run", beat]
        follower.apply()
    assert not token.is_cancelled
    now[0] += OWNER_TIMEOUT_S - 1  # the beat stands still (the owner was killed) ...
    follower.apply()
    assert not token.is_cancelled
    now[0] += 2  # ... for longer than the timeout
    follower.apply()
    assert token.is_cancelled


def test_an_unreachable_variable_is_judged_by_the_beat_too() -> None:
    var, gate, token, now = FakeVariable(), PauseGate(), CancellationToken(), [0.0]
    follower = _Follower(var, gate, token, clock=lambda: now[0])
    follower.apply()
    var.fail = True
    now[0] += OWNER_TIMEOUT_S / 2
    follower.apply()
    assert not token.is_cancelled
    now[0] += OWNER_TIMEOUT_S
    follower.apply()
    assert token.is_cancelled


def test_addresses_and_stores() -> None:
    from pathlib import Path

    from ktrdr_collect.storage.csv_store import CsvStore

    assert scheduler_address("dask://10.0.0.2:8786") == "tcp://10.0.0.2:8786"
    assert store_location(CsvStore(Path("/shared/data"))) == ("csv", "/shared/data")
