"""Broadcasting updates to a stream's viewers: in order, a batch of viewers at a time, and
without letting a viewer that stops reading hold every update in memory."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.protocol import State

from emojistream.common import closecodes
from emojistream.delivery.connections import peer
from emojistream.delivery.metrics import WsMetrics
from emojistream.delivery.stream import Stream

log = logging.getLogger("ws_server")


class Broadcaster:
    """Sends each queued update to the viewers of its stream connected at that moment; one task,
    so updates reach every viewer in the order they came."""

    def __init__(self, batch: int, max_unsent_bytes: int, metrics: WsMetrics,
                 close_later: Callable[[ServerConnection, int, str], None],
                 leaving: set[ServerConnection]):
        self.batch = max(1, batch)
        self.max_unsent_bytes = max_unsent_bytes
        self.metrics = metrics
        self._close_later = close_later
        self._leaving = leaving  # viewers closed by the server, not gone yet
        self._outbox: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start broadcasting (in the running event loop)."""
        self._outbox = asyncio.Queue()
        self._task = asyncio.create_task(self._broadcast_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def enqueue(self, stream: Stream, window: str, data: bytes) -> None:
        assert self._outbox is not None, "start() first"
        self._outbox.put_nowait((stream, window, data))

    async def _broadcast_forever(self) -> None:
        assert self._outbox is not None
        while True:
            stream, window, data = await self._outbox.get()
            await self._broadcast(stream, window, data)
            await asyncio.sleep(0)  # let the connections' tasks run between broadcasts

    async def _broadcast(self, stream: Stream, window: str, data: bytes) -> None:
        """``data`` (encoded once) to every viewer of the stream connected now, a batch at a
        time, letting the event loop run (health checks, pings, new connections) in between."""
        started = time.perf_counter()
        viewers = list(stream.viewers)
        for first in range(0, len(viewers), self.batch):
            if first:
                await asyncio.sleep(0)
            # Viewers that left meanwhile are skipped: broadcast() writes to open ones only.
            batch = self._keeping_up(viewers[first:first + self.batch])
            broadcast(batch, data, text=True)
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

