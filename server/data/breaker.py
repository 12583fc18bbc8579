"""A circuit breaker around the database: after `failures` consecutive failures it opens for
`reset_seconds` (calls fail at once), then lets one probe through and closes on its success."""
from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

from ..errors import Unavailable

T = TypeVar("T")
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, failures: int, reset_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = failures
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._state = CLOSED
        self.listeners: list[Callable[[str], None]] = []

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.reset_seconds:
                return HALF_OPEN
            return self._state

    def call(self, operation: Callable[[], T], is_failure: Callable[[BaseException], bool]) -> T:
        """Run operation; exceptions for which is_failure() is true count against the database."""
        with self._lock:
            if self._state == OPEN:
                closed_in = self._opened_at + self.reset_seconds - self._clock()
                if closed_in > 0 or self._probing:
                    raise Unavailable("database unavailable (circuit open)",
                                      retry_after=closed_in if closed_in > 0 else None)
                self._probing = True  # this call is the one probe
        try:
            result = operation()
        except BaseException as exc:
            if is_failure(exc):
                self._record(False)
            else:
                self._release_probe()
            raise
        self._record(True)
        return result

    def _release_probe(self) -> None:
        with self._lock:
            self._probing = False

    def _record(self, success: bool) -> None:
        with self._lock:
            before = self._state
            self._probing = False
            if success:
                self._failures = 0
                self._state = CLOSED
            else:
                self._failures += 1
                if self._state == OPEN or self._failures >= self.failure_threshold:
                    self._state = OPEN
                    self._opened_at = self._clock()
            after = self._state
        if after != before:
            for listener in self.listeners:
                listener(after)
