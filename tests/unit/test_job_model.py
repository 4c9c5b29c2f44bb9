import pytest

from ktrdr_collect.errors import InvalidJobStateError
from ktrdr_collect.jobs import model
from ktrdr_collect.jobs.folders import new_job_id, reader_view
from ktrdr_collect.jobs.record import JobState


def test_transitions() -> None:
    assert model.can_transition("pending", "running")
    assert model.can_transition("running", "paused") and model.can_transition("paused", "running")
    for end in ("completed", "failed", "cancelled"):
        assert model.can_transition("running", end)
        assert not any(model.can_transition(end, s) for s in model.TRANSITIONS)
    assert model.can_transition("interrupted", "pending")
    assert not model.can_transition("pending", "paused")


@pytest.mark.parametrize("status", ["pending", "paused", "completed", "failed", "cancelled", "interrupted"])
def test_pause_needs_running(status: str) -> None:
    with pytest.raises(InvalidJobStateError, match=f"Cannot pause job in {status} state"):
        model.check_pause(status)


@pytest.mark.parametrize("status", ["pending", "running", "completed", "failed", "cancelled"])
def test_resume_needs_paused_or_interrupted(status: str) -> None:
    with pytest.raises(InvalidJobStateError, match=f"Cannot resume job in {status} state"):
        model.check_resume(status)
    model.check_resume("paused")
    model.check_resume("interrupted")


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_cancel_refuses_finished(status: str) -> None:
    with pytest.raises(InvalidJobStateError, match=f"Cannot cancel {status} job"):
        model.check_cancel(status)
    for ok in ("pending", "running", "paused", "interrupted"):
        model.check_cancel(ok)


def test_exit_codes() -> None:
    assert model.exit_code("completed") == 0
    assert model.exit_code("completed", symbols_failed=2) == 3
    assert model.exit_code("failed") == 4
    assert model.exit_code("cancelled") == 5
    assert model.exit_code("interrupted") == 6
    assert model.exit_code("running") is None
    assert model.final_status(0, 3) == "failed"
    assert model.final_status(1, 3) == "completed"
    assert model.final_status(2, 0) == "completed"


def test_reader_sees_interrupted_only_without_runner() -> None:
    state = JobState("j", "demo", "1d", "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z",
                     status="running", current_symbols=["A"], eta_s=3.0)
    assert reader_view(state, alive=True).status == "running"
    dead = reader_view(state, alive=False)
    assert dead.status == "interrupted" and dead.exit_code == 6 and dead.current_symbols == []
    assert state.status == "running"  # the view is a copy
    state.status = "completed"
    assert reader_view(state, alive=False).status == "completed"


def test_job_ids_sort_by_creation_time() -> None:
    ids = [new_job_id(now=t) for t in (1_700_000_000.0, 1_700_000_000.5, 1_800_000_000.0, 2_000_000_000.0)]
    assert ids == sorted(ids)
    assert all(len(i) <= 16 and set(i) <= set("abcdefghijklmnopqrstuvwxyz0123456789-") for i in ids)
