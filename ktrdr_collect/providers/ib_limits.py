"""IB's pacing rules per bar size, and the per-contract ones shared by every process on the machine.

IB's TWS API documentation ("Historical Data Limitations",
https://interactivebrokers.github.io/tws-api/historical_limitations.html) states its hard pacing
rules under "Pacing Violations for Small Bars (30 secs or less)". A request breaking one is
refused (error 162, pacing violation):

* identical historical data requests within 15 seconds;
* six or more requests for the same contract, exchange and tick type within two seconds;
* more than 60 requests within any ten minutes (a BID_ASK request counts twice).

Its footnote says these limitations "have been lifted" for bars of 1 minute and more, asking for
caution with large amounts of data or requests sent too frequently (soft throttling: IB slows such
requests, or disconnects a client that floods it, rather than refusing them). What IB still states
for every bar size: at most 50 simultaneous open historical requests.

So the provider keeps the hard rules (`STRICT_WINDOW` in the engine's shared pacer, the
per-contract rules here) for bar sizes of 30 s or less, or for every bar size with
`pacing=strict`; for 1 minute and more (`pacing=auto`, the default) a lighter machine-wide pace,
`SOFT_RATE` requests a second (see its note).

`ContractLimiter` keeps both per-contract logs in one file under `<home>/shared/pacing/`, locked
with flock like the SharedPacer: per contract key the start times of its last requests, per
request key the last time it was sent. `book` finds the earliest moment both rules allow and books
it, unless that is further away than the caller is willing to wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ktrdr_collect import paths
from ktrdr_collect.providers.pacing import MARGIN
from ktrdr_collect.providers.shared_file import locked_json

SMALL_BAR_S = 30
"""IB's hard pacing rules are documented for bars of this many seconds or less."""
STRICT_WINDOW = (60, 600.0)
"""Hard rule: at most 60 historical data requests in any 10 minutes."""
SOFT_RATE = 2.0
"""Requests per second, machine-wide, for bars of 1 minute and more. IB gives no number for them:
its docs only ask for caution with requests sent "too frequently" (soft throttling, at worst a
disconnection). 2/s is the pace pysystemtrade settled on for these bar sizes and ran for weeks
without trouble (https://github.com/pst-group/pysystemtrade/pull/501: 0.5 s between requests);
it is 20 times the hard rule's 0.1/s, and it keeps IB's one firm limit out of reach: each job
sends one request at a time, so open requests never exceed the jobs running, and at ~1 s per
answer a 2/s pace has about two open."""
MAX_OPEN = 50
"""IB: at most 50 simultaneous open historical data requests, for every bar size."""
PACING_MODES = ("auto", "strict")
"""`pacing` option: auto (hard rules for bars of 30 s or less only), strict (for every bar size)."""
PER_CONTRACT = (5, 2.0)
"""At most 5 requests for one contract/exchange/tick type in any 2 s (IB: six or more is a violation)."""
IDENTICAL_S = 15.0
"""No identical request within 15 s."""


_UNIT_S = {"sec": 1, "secs": 1, "min": 60, "mins": 60, "hour": 3600, "hours": 3600, "day": 86_400,
           "days": 86_400, "week": 604_800, "weeks": 604_800, "month": 2_592_000, "months": 2_592_000}


def bar_seconds(bar_size: str) -> int:
    """IB's barSizeSetting ("5 secs", "1 min", "4 hours", "1 day") -> seconds."""
    count, _, unit = bar_size.strip().partition(" ")
    try:
        return int(count) * _UNIT_S[unit.strip().lower()]
    except (KeyError, ValueError):
        raise ValueError(f"not an IB bar size: {bar_size!r}") from None


def hard_rules_apply(bar_size: str | None, mode: str = "auto") -> bool:
    """Whether IB's hard pacing rules bind requests of this bar size (None: unknown, so they do)."""
    return mode == "strict" or bar_size is None or bar_seconds(bar_size) <= SMALL_BAR_S


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
