"""What users' scripts see of a status (internal bookkeeping left out, outside text cleaned)."""

from __future__ import annotations

from typing import Any

from ktrdr_collect.jobs.history import HIDDEN
from ktrdr_collect.text import clean, clean_tree


def public_symbol(entry: dict[str, Any]) -> dict[str, Any]:
    """A per-symbol entry; only its error holds outside text (symbols are validated on input)."""
    return {**entry, "error": clean(entry["error"])} if entry.get("error") else entry


def public(status: dict[str, Any]) -> dict[str, Any]:
    """The status without internal keys, its outside text (errors, name, options) cleaned: a state
    written before cleaning existed, or by hand, still shows no control character or token."""
    out = {k: clean_tree(v) for k, v in status.items() if k not in HIDDEN and k != "symbols"}
    if "symbols" in status:
        out["symbols"] = [public_symbol(e) for e in status["symbols"]]
    return out
