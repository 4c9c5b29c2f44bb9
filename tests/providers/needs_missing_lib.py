"""A provider module whose optional library is not installed (for registry tests)."""

import no_such_library_xyz  # noqa: F401

Provider = None
