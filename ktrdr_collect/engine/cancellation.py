"""Cancellation and pause: events that every wait in the engine waits on."""

from __future__ import annotations

import threading
import time
from typing import Any


class ProcessingCancelledException(Exception):
    """Raised when a batch is cancelled; carries the results of the symbols that were started."""

    def __init__(
        self, message: str = "processing cancelled", partial_results: list[Any] | None = None
    ) -> None:
        super().__init__(message)
        self.partial_results: list[Any] = list(partial_results or [])


class CancellationToken:
    """Thread-safe, one-way: once cancelled, always cancelled."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def is_cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds; True at once if cancelled (now or meanwhile)."""
        return self._event.wait(max(0.0, timeout))

    def throw_if_cancelled(self, partial_results: list[Any] | None = None) -> None:
        if self._event.is_set():
            raise ProcessingCancelledException(partial_results=partial_results)


class PauseGate:
    """Open while running; closed while paused. Checked before every provider request."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self._changed = threading.Condition()

    @property
    def is_paused(self) -> bool:
        return not self._open.is_set()

    def pause(self) -> None:
        with self._changed:
            self._open.clear()
            self._changed.notify_all()

    def resume(self) -> None:
        with self._changed:
            self._open.set()
            self._changed.notify_all()

    def wait_open(self, token: CancellationToken, poll: float = 0.05) -> bool:
        """Block while paused; False if cancelled meanwhile."""
        while not token.is_cancelled:
            if self._open.wait(poll):
                return not token.is_cancelled
        return False

    def sleep(self, seconds: float, token: CancellationToken, poll: float = 0.05) -> bool:
        """Sleep `seconds`, cut short by cancel or pause. True if the full time passed."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if token.wait(min(left, poll)) or self.is_paused:
                return False
