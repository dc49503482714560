"""Exponential backoff with jitter, for reconnect loops."""

from __future__ import annotations

import random

# Beyond this the delay is max_s anyway; the limit keeps 2 ** attempts a sane number.
MAX_DOUBLINGS = 32


class Backoff:
    """Delays that double from ``initial_s`` up to ``max_s``, each randomly varied by up to
    ±``jitter`` (a fraction) so that clients dropped together do not come back together."""

    def __init__(self, initial_s: float, max_s: float, jitter: float = 0.3,
                 rng: random.Random | None = None):
        self.initial_s = initial_s
        self.max_s = max(max_s, initial_s)
        self.jitter = jitter
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one attempt."""
        base = min(self.initial_s * 2 ** min(self.attempts, MAX_DOUBLINGS), self.max_s)
        self.attempts += 1
        return base * (1 + self.jitter * self._rng.uniform(-1, 1))

    def reset(self) -> None:
        """Start again from ``initial_s`` (after a success)."""
        self.attempts = 0
