"""IB's per-contract pacing rules, shared by every process on the machine.

Besides "at most 60 requests in any 10 minutes" (the engine's SharedPacer, `rate_windows`), IB
refuses (error 162, pacing violation):

* identical historical data requests within 15 seconds;
* six or more requests for the same contract, exchange and tick type within two seconds.

`ContractLimiter` keeps both logs in one file under `<home>/shared/pacing/`, locked with flock
like the SharedPacer: per contract key the start times of its last requests, per request key the
last time it was sent. `book` finds the earliest moment both rules allow and books it, unless that
is further away than the caller is willing to wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ktrdr_collect import paths
from ktrdr_collect.providers.pacing import MARGIN
from ktrdr_collect.providers.shared_file import locked_json

PER_CONTRACT = (5, 2.0)
"""At most 5 requests for one contract/exchange/tick type in any 2 s (IB: six or more is a violation)."""
IDENTICAL_S = 15.0
"""No identical request within 15 s."""


class ContractLimiter:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time,
                 per_contract: tuple[int, float] = PER_CONTRACT, identical_s: float = IDENTICAL_S) -> None:
        self.path = path
        self.clock = clock
        self.count, span = per_contract
        self.span = span * (1 + MARGIN)
        self.identical = identical_s * (1 + MARGIN)

    def book(self, contract: str, request: str, max_wait: float = float("inf")) -> float:
        """Seconds to wait before sending `request` for `contract`. The slot is booked only when
        that is at most `max_wait`; otherwise nothing is booked and the caller should come back."""
        with locked_json(self.path) as shared:
            now = self.clock()
            log = self._read(shared.load(), now)
            stamps = log["contracts"].setdefault(contract, [])
            slot = now
            if len(stamps) >= self.count:
                slot = max(slot, stamps[-self.count] + self.span)
            last = log["requests"].get(request)
            if last is not None:
                slot = max(slot, last + self.identical)
            wait = slot - now
            if wait <= max_wait:
                stamps.append(slot)
                stamps.sort()
                log["requests"][request] = slot
                shared.save(log)
            return max(0.0, wait)

    def _read(self, data: Any, now: float) -> dict[str, dict]:
        try:
            data = data or {}
            contracts = {str(k): sorted(float(s) for s in v) for k, v in dict(data.get("contracts", {})).items()}
            requests = {str(k): float(v) for k, v in dict(data.get("requests", {})).items()}
        except (ValueError, TypeError, AttributeError):
            contracts, requests = {}, {}
        # forget what no rule can see any more (and absurd future stamps: clock jumps)
        contracts = {k: kept for k, v in contracts.items()
                     if (kept := [s for s in v if now - self.span < s < now + 3600])}
        requests = {k: s for k, s in requests.items() if now - self.identical < s < now + 3600}
        return {"contracts": contracts, "requests": requests}


def limiter_for(clock: Callable[[], float] = time.time, folder: Path | None = None) -> ContractLimiter:
    folder = folder or paths.shared_dir() / "pacing"
    return ContractLimiter(folder / "ib-contracts.json", clock)
