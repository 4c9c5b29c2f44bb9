"""One exception family; each error carries the exit code CONTRACT.md gives it."""

from __future__ import annotations

# CONTRACT.md, "Exit codes": the one place they are written down.
EXIT_OK = 0
EXIT_ERROR = 1
"""Bad input, job not found, invalid state transition, provider error before start."""
EXIT_USAGE = 2
EXIT_SYMBOLS_FAILED = 3
"""A job completed, but at least one series failed."""
EXIT_JOB_FAILED = 4
EXIT_CANCELLED = 5
EXIT_INTERRUPTED = 6
EXIT_TIMEOUT = 124
"""`wait --timeout` ran out."""
EXIT_CTRL_C = 130
"""A foreground `start` stopped by Ctrl-C."""


class CollectError(Exception):
    """An error shown to the user as one `Error: ...` line."""

    exit_code = EXIT_ERROR


class UsageError(CollectError):
    exit_code = EXIT_USAGE


class InvalidInputError(CollectError):
    """Bad symbol, window, option or config value."""


class JobNotFoundError(CollectError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"Job not found: {ref}")


class AmbiguousJobError(CollectError):
    pass


class InvalidJobStateError(CollectError):
    pass


class StateFileError(CollectError):
    """A state file that cannot be read: corrupt, or written by a newer version."""


class ProviderUnavailableError(CollectError):
    """Unknown provider, missing optional dependency, bad provider option."""
