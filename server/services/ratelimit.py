"""Per-caller token buckets: `rate` calls a second on average, bursts of up to `burst`; per process
(TokenBuckets) or shared by every process of every replica through Redis (SharedTokenBuckets)."""
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


# One bucket per caller in Redis, updated atomically: the refill, the take and the expiry in one
# script, on Redis's clock, so every process of every replica draws from the same bucket.
TOKEN_BUCKET_SCRIPT = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class SharedTokenBuckets:
    """TokenBuckets shared through Redis; the local buckets while Redis is down or slow."""

    def __init__(self, rate: float, burst: int, link, local: TokenBuckets | None = None):
        self.rate = rate
        self.burst = burst
        self.link = link  # server.data.redislink.RedisLink
        self.local = local or TokenBuckets(rate, burst)
        self._script = link.client.register_script(TOKEN_BUCKET_SCRIPT)

    def take(self, caller: str) -> float:
        key = self.link.key("rate", caller)
        return self.link.call(lambda client: float(self._script(keys=[key], args=[self.rate, self.burst],
                                                                client=client)),
                              lambda: self.local.take(caller))
