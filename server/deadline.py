"""The one form a deadline takes inside the service: an instant on the monotonic clock.

Every wait of a call is bounded by it: waiting for a worker, for a pooled connection, for a
connection's set-up and every reply, for the inventory lock, for the next watch update. A call
without a deadline gets the server's default (`server.default_deadline_seconds`), so nothing
inside ever waits without a bound; gRPC reports such a call as one about 9.2e18 s away, a
value that overflows `Lock.acquire` and `select`.
"""
from __future__ import annotations

import time

from .errors import DeadlineExceeded

# A deadline further away than this is no deadline: gRPC's "none" is ~9.2e18 s.
_NO_DEADLINE = 1e8  # seconds
_MIN_IO_TIMEOUT = 0.001  # seconds: 0 means "no timeout" to the socket layer


class Deadline:
    """When the work must be done by (time.monotonic() seconds)."""
    __slots__ = ("at",)

    def __init__(self, at: float):
        self.at = at

    @classmethod
    def after(cls, seconds: float) -> "Deadline":
        return cls(time.monotonic() + seconds)

    @classmethod
    def of_call(cls, context, default_seconds: float) -> "Deadline":
        """The call's own deadline, or `default_seconds` from now when it has none."""
        return cls.of_stream(context) or cls.after(default_seconds)

    @classmethod
    def of_stream(cls, context) -> "Deadline | None":
        """The call's own deadline; None when it has none (a stream that may stay open for good,
        whose every wait is capped instead)."""
        left = context.time_remaining()
        return None if left is None or left > _NO_DEADLINE else cls.after(left)

    def left(self) -> float:
        """Seconds left, never negative."""
        return max(self.at - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def check(self, stage: str) -> None:
        """DeadlineExceeded `stage` (e.g. "before pricing") when no time is left."""
        if time.monotonic() >= self.at:
            raise DeadlineExceeded(f"deadline exceeded {stage}")

    def acquire(self, lock, waiting_for: str) -> None:
        """Take `lock` (a Lock or Semaphore), waiting no longer than the deadline."""
        if not lock.acquire(timeout=self.left()):
            raise DeadlineExceeded(f"deadline exceeded waiting for {waiting_for}")

    def io_timeout(self, cap: float) -> float:
        """A socket timeout for one read or write: the time left, at most `cap`, never 0."""
        return max(min(self.at - time.monotonic(), cap), _MIN_IO_TIMEOUT)

    def sooner_than(self, cap: float) -> bool:
        """True when the deadline, not `cap`, bounds the next wait (a time-out is then the deadline's)."""
        return self.at - time.monotonic() < cap

    def __repr__(self) -> str:
        return f"Deadline(left={self.at - time.monotonic():.3f}s)"
