"""One exception family; each error carries the exit code CONTRACT.md gives it."""

from __future__ import annotations


class CollectError(Exception):
    """An error shown to the user as one `Error: ...` line."""

    exit_code = 1


class UsageError(CollectError):
    exit_code = 2


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
