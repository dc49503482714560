"""Refused clients in the logs as counts, not one line each: outsiders cannot flood the logs.

A server calls ``refused(reason, who)`` for every client it turns away (a bad token, a rate
limit, a wrong key, ...). Each refusal is logged at DEBUG only; at INFO the log gets one line per
interval (REFUSALS_LOG_INTERVAL_S) in which anyone was refused, with the count of each reason:

    refused 1234 clients in the last 10 s: bad token 1200, rate limited 34

The line is written by whichever comes first: the next refusal once the interval has passed, or
the periodic flush (``run`` in an asyncio server, ``start_thread`` in a threaded one), and at
the end (``flush``). The counts of every refusal stay exact: the metrics of each server count
them too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable


class RefusalLog:
    """The refusals of one process since its last line; thread-safe."""

    def __init__(self, log: logging.Logger, interval_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.log = log
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._since = clock()

    def refused(self, reason: str, who: str = "") -> None:
        """Count one refused client; write the line if the interval has passed."""
        with self._lock:
            self._counts[reason] += 1
        self.log.debug("refused %s: %s", who or "a client", reason)
        if self._clock() - self._since >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        """Write the line of the refusals counted since the last one, if any."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
            now = self._clock()
            elapsed, self._since = now - self._since, now
        if counts:
            self.log.info("refused %d client(s) in the last %s s: %s", sum(counts.values()),
                          f"{elapsed:.0f}" if elapsed >= 10 else f"{elapsed:.1f}",
                          ", ".join(f"{reason} {n}" for reason, n in counts.most_common()))

    async def run(self) -> None:
        """Flush every interval, in an asyncio server, until cancelled (then flush once more)."""
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                self.flush()
        finally:
            self.flush()

    def start_thread(self) -> RefusalLog:
        """Flush every interval from a daemon thread, in a threaded server."""
        def flush_forever():
            while True:
                time.sleep(self.interval_s)
                self.flush()
        threading.Thread(target=flush_forever, name="refusal-log", daemon=True).start()
        return self
