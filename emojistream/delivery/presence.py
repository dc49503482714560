"""Presence across servers: each stream's viewers on the other clusters' servers, from their
GET /health (the same answer the registration API balances by), polled every
WS_PRESENCE_POLL_S. A server adds them to its own live count for the "watching" of each update
(docs/delivery.md#presence). A peer that does not answer counts no viewer: its viewers reconnect
to a server that answers and are counted there."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from emojistream import topology
from emojistream.delivery.settings import DeliverySettings

log = logging.getLogger("ws_server")

# fetch(url, timeout_s) -> the JSON of a 200 answer; raises OSError or ValueError otherwise.
Fetch = Callable[[str, float], Awaitable[dict]]


async def fetch_json(url: str, timeout_s: float) -> dict:
    """GET ``url`` (http or https) with one HTTP/1.0 request on the event loop, no thread."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if https else 80)
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl.create_default_context() if https else None)
        try:
            writer.write(f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
                         "Connection: close\r\n\r\n".encode("ascii"))
            answer = await reader.read()
        finally:
            writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise ValueError(f"{url} answered {head[:40]!r}")
    health = json.loads(body)
    if not isinstance(health, dict):
        raise ValueError(f"{url} answered no JSON object")
    return health


class PeerViewers:
    """Each stream's live viewers on the other servers, as they last answered."""

    def __init__(self, settings: DeliverySettings, cluster: int, fetch: Fetch = fetch_json):
        self.interval_s = settings.ws_presence_poll_s
        self._urls = {n: topology.ws_health_url(settings, n)
                      for n in settings.clusters if n != cluster}
        self._fetch = fetch
        self._viewers: dict[int, dict[str, int]] = {}  # peer -> stream -> its viewers there
        self._answering: dict[int, bool] = {}

    def count(self, stream_id: str) -> int:
        return sum(streams.get(stream_id, 0) for streams in self._viewers.values())

    async def run(self) -> None:
        """Poll every peer every interval, all at once, until cancelled (the first poll after
        one interval: the servers of a stack start together)."""
        while True:
            await asyncio.sleep(self.interval_s)
            await asyncio.gather(*(self.poll(n) for n in self._urls))

    async def poll(self, peer: int) -> None:
        try:
            health = await self._fetch(self._urls[peer], self.interval_s)
            self._viewers[peer] = {
                stream_id: stream["viewers"] for stream_id, stream in health["streams"].items()
                if isinstance(stream, dict) and type(stream.get("viewers")) is int}
        except (OSError, ValueError, KeyError, AttributeError, TimeoutError) as err:
            self._viewers.pop(peer, None)
            if self._answering.get(peer, True):
                log.info("presence: cluster %d's server does not answer at %s (%s); its "
                         "viewers are not counted", peer, self._urls[peer],
                         str(err) or type(err).__name__)
            self._answering[peer] = False
            return
        if not self._answering.get(peer, True):
            log.info("presence: cluster %d's server answers again", peer)
        self._answering[peer] = True
