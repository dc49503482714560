"""Broadcasting updates to a stream's viewers: in order, a batch of viewers at a time, and
without letting a viewer that stops reading hold every update in memory.

Conflation (WS_CONFLATE, on by default): while the server is behind, an update still queued is
replaced by a newer version of the same stream's window, in its place in the queue; and a
broadcast under way stops at its next batch when a newer version of its window is next in line
(the viewers not yet written to get that one instead). A window's last version is never
replaced, so every viewer still gets each window's final count, and nothing is dropped when
the server keeps up."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.protocol import State

from emojistream.common import closecodes
from emojistream.delivery.connections import peer
from emojistream.delivery.metrics import WsMetrics
from emojistream.delivery.stream import Stream, with_watching

log = logging.getLogger("ws_server")


class Broadcaster:
    """Sends each queued update to the viewers of its stream connected at that moment; one task,
    so updates reach every viewer in the order they came."""

    def __init__(self, batch: int, max_unsent_bytes: int, metrics: WsMetrics,
                 close_later: Callable[[ServerConnection, int, str], None],
                 leaving: set[ServerConnection], conflate: bool = True):
        self.batch = max(1, batch)
        self.conflate = conflate
        self.max_unsent_bytes = max_unsent_bytes
        self.metrics = metrics
        self._close_later = close_later
        self._leaving = leaving  # viewers closed by the server, not gone yet
        # Queued updates, oldest first: [stream, window, data, total]; with conflation, the
        # queued entry of each (stream, window), whose data a newer version replaces.
        self._outbox: deque[list] = deque()
        self._queued: dict[tuple[Stream, str], list] = {}
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start broadcasting (in the running event loop)."""
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._broadcast_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def enqueue(self, stream: Stream, window: str, data: bytes, total: int = 0) -> None:
        """Queue an update; the stream remembers it (for the viewers connecting later) when it
        is broadcast, so a connecting viewer gets each version either in its snapshot or
        live, never both."""
        assert self._ready is not None, "start() first"
        if self.conflate:
            queued = self._queued.get((stream, window))
            if queued is not None:  # behind: the newer version takes the older one's place
                queued[2], queued[3] = data, total
                self.metrics.conflated.inc()
                return
        entry = [stream, window, data, total]
        stream.pending += 1
        self._outbox.append(entry)
        if self.conflate:
            self._queued[(stream, window)] = entry
        self._ready.set()

    def _next(self) -> tuple[Stream, str, bytes, int]:
        stream, window, data, total = self._outbox.popleft()
        self._queued.pop((stream, window), None)
        stream.pending -= 1
        return stream, window, data, total

    def _superseded(self, stream: Stream, window: str) -> bool:
        """Whether the next queued update is a newer version of this window (conflation)."""
        return self.conflate and bool(self._outbox) and self._outbox[0][0] is stream \
            and self._outbox[0][1] == window

    async def _broadcast_forever(self) -> None:
        assert self._ready is not None
        while True:
            while not self._outbox:
                self._ready.clear()
                await self._ready.wait()
            await self._broadcast(*self._next())
            await asyncio.sleep(0)  # let the connections' tasks run between broadcasts

    async def _broadcast(self, stream: Stream, window: str, data: bytes, total: int) -> None:
        """``data`` (encoded once) to every viewer of the stream connected now, a batch at a
        time, letting the event loop run (health checks, pings, new connections) in between.
        The stream remembers it in the same step: a viewer connecting later gets it from
        there (its snapshot or recovery), not from this broadcast."""
        started = time.perf_counter()
        viewers = list(stream.viewers)
        stream.remember(window, data, total)
        counted = with_watching(data, stream.watching())
        for first in range(0, len(viewers), self.batch):
            if first:
                await asyncio.sleep(0)
                if self._superseded(stream, window):
                    self.metrics.superseded.inc(len(viewers) - first)
                    break
            # Viewers that left meanwhile are skipped: broadcast() writes to open ones only.
            batch = self._keeping_up(viewers[first:first + self.batch])
            if stream.bare:  # the viewers that asked for no presence get the update as it is
                broadcast([v for v in batch if v in stream.bare], data, text=True)
                broadcast([v for v in batch if v not in stream.bare], counted, text=True)
            else:
                broadcast(batch, counted, text=True)
            self.metrics.messages.inc(len(batch))
        self.metrics.broadcasts.inc()
        self.metrics.duration.observe(time.perf_counter() - started)
        log.debug("broadcast window %s to %d viewer(s) in %.1f ms", window, len(viewers),
                  1000 * (time.perf_counter() - started))

    def _keeping_up(self, viewers: list[ServerConnection]) -> list[ServerConnection]:
        """The viewers whose unsent data is within the limit; the others are closed (4408).
        broadcast() applies no backpressure: a viewer that stops reading would otherwise keep
        every update in memory until its keepalive times out."""
        keeping_up = []
        for viewer in viewers:
            if viewer in self._leaving:
                continue
            unsent = viewer.transport.get_write_buffer_size()
            if unsent <= self.max_unsent_bytes or viewer.state is not State.OPEN:
                keeping_up.append(viewer)
                continue
            self.metrics.slow_dropped.inc()
            log.info("closing a viewer from %s that does not keep up: %d bytes unsent",
                     peer(viewer), unsent)
            self._close_later(viewer, closecodes.TOO_SLOW,
                              f"too slow: more than {self.max_unsent_bytes} bytes unsent")
        return keeping_up

