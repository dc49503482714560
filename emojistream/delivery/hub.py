"""What flows through one cluster's WebSocket server: viewers admitted by their token, updates
from the subscribers deduplicated and broadcast to their stream's viewers (docs/delivery.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed

from emojistream.common import closecodes, moments, tokens
from emojistream.common.events import InvalidEvent, decode_window_update, parse_timestamp
from emojistream.common.refusals import RefusalLog
from emojistream.delivery.broadcast import Broadcaster
from emojistream.delivery.connections import Connections, peer
from emojistream.delivery.dedup import WindowDeduplicator
from emojistream.delivery.metrics import WsMetrics
from emojistream.delivery.presence import PeerViewers
from emojistream.delivery.settings import DeliverySettings
from emojistream.delivery.stream import MomentRule, Stream, with_watching

log = logging.getLogger("ws_server")

VIEWER_PATH = "/"
PUBLISH_PATH = "/publish"


class Hub:
    """The cluster's connections, its streams, and the broadcasting between them."""

    def __init__(self, settings: DeliverySettings, cluster: int, subscriber_key: str,
                 token_secret: str):
        self.cluster = cluster
        self.subscriber_key = subscriber_key
        self._token_secret = token_secret
        self._dedup_windows = settings.ws_dedup_windows
        self._recovery_windows = settings.recovery_max_windows
        self._moment_rule = MomentRule.from_settings(settings)
        self.connections = Connections(settings.ws_max_connections_per_address,
                                       settings.ws_close_timeout_s)
        self.streams: dict[str, Stream] = {}
        self.metrics = WsMetrics(self.connections)
        self.broadcaster = Broadcaster(settings.ws_broadcast_batch,
                                       settings.ws_max_viewer_buffer_bytes, self.metrics,
                                       self.connections.close_later, self.connections.leaving,
                                       settings.ws_conflate)
        self.refusals = RefusalLog(log, settings.refusals_log_interval_s)
        self.peers = PeerViewers(settings, cluster)
        self._tasks: list[asyncio.Task] = []

    @property
    def viewers(self) -> set[ServerConnection]:
        return self.connections.viewers

    @property
    def subscribers(self) -> set[ServerConnection]:
        return self.connections.subscribers

    def start(self) -> None:
        """Start broadcasting, logging the refusals and polling the peers' viewers (in the
        running event loop)."""
        self.broadcaster.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.refusals.run()), loop.create_task(self.peers.run())]

    async def stop(self) -> None:
        await self.broadcaster.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def health(self) -> dict:
        return {"cluster": self.cluster, "status": "ok", "viewers": len(self.viewers),
                "subscribers": len(self.subscribers),
                "streams": {stream_id: stream.health()
                            for stream_id, stream in sorted(self.streams.items())}}

    def too_many(self, connection: ServerConnection) -> bool:
        """Whether the viewer's address has its limit of connections already (counted, logged)."""
        if not self.connections.address_full(connection):
            return False
        self.metrics.over_address_limit.inc()
        self.refusals.refused("too many connections from the address", peer(connection))
        return True

    def _stream(self, stream_id: str) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None:
            stream = self.streams[stream_id] = Stream(
                self._dedup_windows, self._recovery_windows, self._moment_rule,
                elsewhere=lambda: self.peers.count(stream_id))
        return stream

    # --- WebSocket connections ---

    async def handle(self, connection: ServerConnection) -> None:
        assert connection.request is not None  # handlers run after the handshake
        path = connection.request.path
        if urlsplit(path).path == PUBLISH_PATH:
            await self._serve(connection, (self.subscribers,), "subscriber", self._on_update,
                              logging.INFO)
            return
        try:
            client_id, stream_id, session = tokens.verify(self._token_secret, _token(path),
                                                          self.cluster, time.time())
        except tokens.TokenError as err:
            self.metrics.tokens_refused.inc()
            self.refusals.refused(f"{err.reason} ({err.code})", peer(connection))
            await connection.close(err.code, err.reason)
            return
        if self.too_many(connection):  # handshakes that were under way together
            await connection.close(closecodes.TOO_MANY, "too many connections from your address")
            return
        try:
            since, presence = since_of(path), presence_of(path)
        except ValueError as err:  # refused before the handshake already (routes.py)
            await connection.close(closecodes.BAD_REQUEST, str(err)[:120])
            return
        await self._serve_viewer(connection, client_id, session, self._stream(stream_id), since,
                                 presence)

    async def _serve_viewer(self, connection: ServerConnection, client_id: str,
                            session: str | None, stream: Stream,
                            since: tuple[str, float] | None = None,
                            presence: bool = True) -> None:
        """One live connection per viewing session (the session id signed into the token): a
        newer one of the same session replaces the older; another session of the same client
        id is served alongside, never evicting it. The viewer gets its stream's snapshot first,
        written before it joins the broadcasts (no await between), so no update can come
        between them or before them. With ``since`` (recovery), it gets a "recovery" message
        and the latest update of every held window after that one instead of the snapshot."""
        previous = self.connections.add_viewer(connection, client_id, session)
        if previous is not None:
            self.metrics.replaced.inc()
            log.info("viewer %r connected again from %s: closing its connection from %s",
                     client_id, peer(connection), peer(previous))
            self.connections.close_later(previous, closecodes.REPLACED,
                                         "replaced by a newer connection of this session")
        if since is None:
            backlog = stream.snapshot()
        else:
            backlog, complete = stream.since(since[1])
            self.metrics.recoveries.labels("complete" if complete else "partial").inc()
            broadcast([connection], json.dumps(
                {"type": "recovery", "since": since[0], "complete": complete,
                 "windows": len(backlog)}, separators=(",", ":")), text=True)
        watching = stream.watching() + 1  # with this one, which joins below
        for data in backlog:
            broadcast([connection], with_watching(data, watching) if presence else data,
                      text=True)
        groups: tuple[set, ...] = (self.viewers, stream.viewers)
        if not presence:
            groups += (stream.bare,)
        try:
            await self._serve(connection, groups, f"viewer {client_id!r}",
                              self._on_viewer_message, logging.DEBUG)
        finally:
            self.connections.remove_viewer(connection, client_id, session)

    async def _serve(self, connection, groups: tuple[set, ...], kind: str, on_message,
                     level: int) -> None:
        for group in groups:
            group.add(connection)
        log.log(level, "%s connected from %s; %d viewer(s), %d subscriber(s)", kind,
                peer(connection), len(self.viewers), len(self.subscribers))
        try:
            async for message in connection:
                on_message(connection, message)
        except ConnectionClosed:
            pass
        finally:
            for group in groups:
                group.discard(connection)
            self.connections.leaving.discard(connection)
            log.log(level, "%s from %s disconnected (code %s); %d viewer(s), %d subscriber(s)",
                    kind, peer(connection), connection.close_code, len(self.viewers),
                    len(self.subscribers))

    def _on_viewer_message(self, connection: ServerConnection, _message) -> None:
        self.metrics.from_viewers.inc()
        log.debug("discarded a message from viewer %s", peer(connection))

    def _on_update(self, connection: ServerConnection, message) -> None:
        """A subscriber's update: the first copy of each version of a window is broadcast."""
        try:
            if not isinstance(message, str):
                raise InvalidEvent("binary message (updates are text)")
            update = decode_window_update(message)
            stream = self._stream(update["stream_id"])
            verdict = stream.dedup.check(update)
        except (InvalidEvent, ValueError) as err:
            self.metrics.updates_dropped.labels("invalid").inc()
            log.warning("skipped an invalid update from %s: %s (%d invalid so far)",
                        peer(connection), err,
                        self.metrics.count("updates_dropped", {"reason": "invalid"}))
            return
        if verdict != WindowDeduplicator.NEW:
            self.metrics.updates_dropped.labels(verdict).inc()
            log.debug("dropped a %s update for window %s of %s", verdict,
                      update["window_start"], update["stream_id"])
            return
        data = message.encode("utf-8")
        total = moments.window_total(update)
        if stream.moment(update["window_start"], total):
            data = moments.with_moment(data)
        self.metrics.accepted.inc()
        # A stream nobody watches here costs nothing more; it is remembered at once, unless
        # updates of it are still queued (then it keeps their order, behind them).
        if stream.viewers or stream.pending:
            self.broadcaster.enqueue(stream, update["window_start"], data, total)
        else:
            stream.remember(update["window_start"], data, total)
            self.metrics.unwatched.inc()


def since_of(path: str) -> tuple[str, float] | None:
    """The ``since`` of a viewer's query string (the window start it saw last, as updates
    carry it) and that start in epoch seconds; None without one. ValueError (its reason) when
    it is not an ISO-8601 timestamp."""
    values = parse_qs(urlsplit(path).query, keep_blank_values=True).get("since")
    if not values:
        return None
    text = values[0]
    try:
        if not text:
            raise InvalidEvent("empty")
        return text, parse_timestamp(text).timestamp()
    except InvalidEvent:
        raise ValueError(f"since must be a window_start as updates carry it (ISO-8601, e.g. "
                         f"2026-12-05T08:42:26.000Z; URL-encoded), got {text[:64]!r}") from None


def presence_of(path: str) -> bool:
    """Whether the viewer's updates carry "watching": yes unless it asked for presence=0;
    ValueError for a value other than 0 or 1."""
    values = parse_qs(urlsplit(path).query, keep_blank_values=True).get("presence")
    if not values or values[0] == "1":
        return True
    if values[0] == "0":
        return False
    raise ValueError(f"presence must be 0 or 1, got {values[0][:16]!r}")


def _token(path: str) -> str | None:
    """The token of the query string, if any."""
    values = parse_qs(urlsplit(path).query).get("token")
    return values[0] if values else None
