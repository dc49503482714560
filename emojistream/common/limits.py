"""Rate limits per client address: a token bucket for each address.

    limiter = RateLimiter(rate_per_s=100, burst=20_000)
    wait_s = limiter.take("203.0.113.7")     # None: go ahead; else seconds until allowed
    wait_s = limiter.take("203.0.113.7", 50) # 50 tokens at once (the ingest API: events)

An address may do ``burst`` requests at once, then ``rate_per_s`` a second. The buckets of
addresses that have been quiet long enough to be full again are forgotten, so an attacker's
many addresses cost memory only while they are busy. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Forget full buckets once there are this many.
PRUNE_AT = 10_000


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int,
                 clock: Callable[[], float] = time.monotonic):
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, cost: int = 1) -> float | None:
        """Take ``cost`` tokens of ``key``'s bucket (all or none): None when there were that
        many, else the seconds until there are (infinite when ``cost`` exceeds the burst)."""
        with self._lock:
            now = self._clock()
            tokens = self._tokens(key, now)
            if tokens < cost:
                self._buckets[key] = (tokens, now)
                if cost > self.burst or self.rate_per_s <= 0:
                    return float("inf")
                return (cost - tokens) / self.rate_per_s
            self._buckets[key] = (tokens - cost, now)
            if len(self._buckets) > PRUNE_AT:
                self._prune(now)
            return None

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate_per_s)

    def _prune(self, now: float) -> None:
        full = [key for key in self._buckets if self._tokens(key, now) >= self.burst]
        for key in full:
            del self._buckets[key]

    def tracked(self) -> int:
        """How many addresses have a bucket."""
        with self._lock:
            return len(self._buckets)
