"""Job states, the transitions between them, and what each means as an exit code."""

from __future__ import annotations

from ktrdr_collect.errors import (
    EXIT_CANCELLED,
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_SYMBOLS_FAILED,
    InvalidJobStateError,
)

SCHEMA = 1

PENDING, RUNNING, PAUSED = "pending", "running", "paused"
COMPLETED, FAILED, CANCELLED, INTERRUPTED = "completed", "failed", "cancelled", "interrupted"

FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})
ACTIVE = frozenset({PENDING, RUNNING, PAUSED})
"""States that need a live runner; seen without one they read as `interrupted`."""

TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({RUNNING, CANCELLED, FAILED, INTERRUPTED}),
    RUNNING: frozenset({PAUSED, COMPLETED, FAILED, CANCELLED, INTERRUPTED}),
    PAUSED: frozenset({RUNNING, COMPLETED, FAILED, CANCELLED, INTERRUPTED}),
    INTERRUPTED: frozenset({PENDING, CANCELLED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}
"""Enforced by jobs.record.JobState. A runner that stops before the end (a signal, a start-up error,
a full disk) records `interrupted` itself; a runner that dies leaves its last status, which every
reader shows as `interrupted`."""


def can_transition(current: str, target: str) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def check_pause(status: str) -> None:
    if status != RUNNING:
        raise InvalidJobStateError(f"Cannot pause job in {status} state")


def check_resume(status: str) -> None:
    if status not in (PAUSED, INTERRUPTED):
        raise InvalidJobStateError(f"Cannot resume job in {status} state")


def check_cancel(status: str) -> None:
    if status in FINISHED:
        raise InvalidJobStateError(f"Cannot cancel {status} job")


def exit_code(status: str, symbols_failed: int = 0) -> int | None:
    """CONTRACT.md exit codes for a job; None while it is still going."""
    if status == COMPLETED:
        return EXIT_SYMBOLS_FAILED if symbols_failed else EXIT_OK
    return {FAILED: EXIT_JOB_FAILED, CANCELLED: EXIT_CANCELLED, INTERRUPTED: EXIT_INTERRUPTED}.get(status)


def final_status(symbols_completed: int, symbols_failed: int) -> str:
    """How a job that ran to the end finished: failed when no symbol succeeded."""
    return FAILED if symbols_failed and not symbols_completed else COMPLETED
