"""What users' scripts see of a status (internal bookkeeping left out)."""

from __future__ import annotations

from typing import Any

HIDDEN = ("control_offset", "pid", "runs")


def public(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k not in HIDDEN}
