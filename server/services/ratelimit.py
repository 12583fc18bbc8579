"""Per-caller token buckets: `rate` calls a second on average, bursts of up to `burst`."""
from __future__ import annotations

import threading
import time
from typing import Callable

from cachetools import LRUCache


class TokenBuckets:
    def __init__(self, rate: float, burst: int, max_callers: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: LRUCache = LRUCache(maxsize=max_callers)  # caller -> (tokens, updated)
        self._lock = threading.Lock()

    def take(self, caller: str) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        now = self._clock()
        with self._lock:
            tokens, updated = self._buckets.get(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - updated) * self.rate)
            if tokens >= 1.0:
                self._buckets[caller] = (tokens - 1.0, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            return (1.0 - tokens) / self.rate
