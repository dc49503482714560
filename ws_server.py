"""Cluster N's WebSocket server: fans window updates out to the cluster's viewers.

    ws_server.py --cluster N     listens on WS_HOST, port WS_FIRST_PORT + N - 1

    ws://HOST:PORT/?token=T      viewers, with the token the registration API gave them; closed
                                 with 4401 (missing, invalid or expired token) or 4403 (a token
                                 for another cluster). What viewers send is discarded
    ws://HOST:PORT/publish       the cluster's subscribers, with "Authorization: Bearer <key>"
                                 (HTTP 401 otherwise); every text message is a window update
    GET http://HOST:PORT/health  {"cluster": N, "status": "ok", "viewers": V, "subscribers": S,
                                  "streams": {ID: {"viewers": V, "last_window": START,
                                                   "last_window_total": T}, ...}}
    GET http://HOST:PORT/metrics Prometheus metrics: viewers, broadcasts and their duration,
                                 slow viewers dropped, tokens refused (emojistream/common/metrics.py)

One asyncio event loop, no threads: the first copy of each version of a window is broadcast, in
batches of WS_BROADCAST_BATCH viewers, to the viewers of its stream (the stream their token
names), the second copy (from the other subscriber) dropped; a stream nobody watches costs no
broadcast. A viewer gets, as it connects, the latest update of its stream's current and
previous windows.
Limits: one live connection per client id (a newer one replaces the older: 4409), at most
WS_MAX_CONNECTIONS_PER_ADDRESS viewers per client address (HTTP 429), at most
WS_MAX_VIEWER_BUFFER_BYTES unsent per viewer (a viewer that stops reading is closed: 4408); the
close codes are in emojistream/common/closecodes.py. Deduplication, heartbeats and scale:
docs/delivery.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import hmac
import http
import json
import logging
import signal
import sys
import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from emojistream import config
from emojistream.common import closecodes, metrics, secrets, tokens
from emojistream.common.events import InvalidEvent, decode_window_update, parse_timestamp
from emojistream.common.lifecycle import add_cluster_option, load_settings, raise_open_file_limit
from emojistream.common.logs import setup_logging
from emojistream.delivery.dedup import WindowDeduplicator

log = logging.getLogger("ws_server")

VIEWER_PATH = "/"
PUBLISH_PATH = "/publish"
HEALTH_PATH = "/health"
METRICS_PATH = metrics.PATH


# The windows of a stream whose latest update a viewer gets as it connects.
SNAPSHOT_WINDOWS = 2


class Stream:
    """A stream's viewers on this server, its deduplication, and the latest update of its two
    newest windows (the snapshot a new viewer gets)."""

    def __init__(self, dedup_windows: int):
        self.viewers: set[ServerConnection] = set()
        self.dedup = WindowDeduplicator(dedup_windows)
        self.recent: dict[float, tuple[str, bytes, int]] = {}  # start -> (window, data, total)

    def remember(self, update: dict, data: bytes) -> None:
        start = parse_timestamp(update["window_start"]).timestamp()
        if len(self.recent) >= SNAPSHOT_WINDOWS and start < min(self.recent):
            return  # a late update of an older window
        total = sum(a["count"] for a in update["aggregates"])
        self.recent[start] = (update["window_start"], data, total)
        while len(self.recent) > SNAPSHOT_WINDOWS:
            del self.recent[min(self.recent)]

    def snapshot(self) -> list[bytes]:
        """The latest update of each recent window, oldest window first."""
        return [self.recent[start][1] for start in sorted(self.recent)]

    def health(self) -> dict:
        latest = max(self.recent) if self.recent else None
        window, _, total = self.recent[latest] if latest is not None else (None, b"", 0)
        return {"viewers": len(self.viewers), "last_window": window,
                "last_window_total": total}


class Hub:
    """The cluster's connections and what flows between them."""

    def __init__(self, settings: config.Settings, cluster: int, subscriber_key: str,
                 token_secret: str):
        self.cluster = cluster
        self.broadcast_batch = max(1, settings.ws_broadcast_batch)
        self.max_per_address = settings.ws_max_connections_per_address
        self.max_unsent_bytes = settings.ws_max_viewer_buffer_bytes
        self.close_timeout_s = settings.ws_close_timeout_s
        # Updates waiting to be broadcast, in order; created by start() in the running loop.
        self._outbox: asyncio.Queue | None = None
        self._broadcaster: asyncio.Task | None = None
        self._key = subscriber_key.encode("utf-8")
        self._token_secret = token_secret
        self.viewers: set[ServerConnection] = set()
        self.subscribers: set[ServerConnection] = set()
        self._viewer_of: dict[str, ServerConnection] = {}  # client id -> its live connection
        self.streams: dict[str, Stream] = {}
        self._dedup_windows = settings.ws_dedup_windows
        self._per_address: Counter[str] = Counter()  # viewer connections per client address
        self._closing: set[asyncio.Task] = set()
        self._leaving: set[ServerConnection] = set()  # closed by the server, not gone yet
        self.stats = {"broadcast": 0, "duplicate": 0, "stale": 0, "invalid": 0,
                      "from_viewers": 0, "refused": 0, "replaced": 0, "too_many": 0,
                      "too_slow": 0, "unwatched": 0}
        self.metrics = metrics.WsMetrics(self)

    # --- HTTP, before the WebSocket handshake ---

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == HEALTH_PATH:
            return self._health(connection, request.method)
        if path == METRICS_PATH:
            return self._metrics(connection, request.method)
        if path == PUBLISH_PATH and not self._authorized(request.headers):
            log.warning("refused a subscriber from %s: missing or wrong key",
                        _peer(connection))
            return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                      "missing or wrong subscriber key "
                                      "(send Authorization: Bearer <key>)\n")
        if path not in (VIEWER_PATH, PUBLISH_PATH):
            return connection.respond(http.HTTPStatus.NOT_FOUND,
                                      f"no such endpoint: {path} (viewers connect to "
                                      f"{VIEWER_PATH}, subscribers to {PUBLISH_PATH})\n")
        if path == VIEWER_PATH and self._too_many(connection):
            return connection.respond(http.HTTPStatus.TOO_MANY_REQUESTS,
                                      f"too many connections from {_address(connection)}: at "
                                      f"most {self.max_per_address} "
                                      "(WS_MAX_CONNECTIONS_PER_ADDRESS)\n")
        return None

    def _too_many(self, connection: ServerConnection) -> bool:
        if self._per_address[_address(connection)] < self.max_per_address:
            return False
        self.stats["too_many"] += 1
        log.info("refused a viewer from %s: %d connections from that address already",
                 _peer(connection), self._per_address[_address(connection)])
        return True

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, presented = headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode("utf-8"), self._key)

    def health(self) -> dict:
        return {"cluster": self.cluster, "status": "ok", "viewers": len(self.viewers),
                "subscribers": len(self.subscribers),
                "streams": {stream_id: stream.health()
                            for stream_id, stream in sorted(self.streams.items())}}

    def _stream(self, stream_id: str) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None:
            stream = self.streams[stream_id] = Stream(self._dedup_windows)
        return stream

    def _health(self, connection: ServerConnection, method: str) -> Response:
        if method != "GET":
            return _get_only(connection, method, HEALTH_PATH)
        return _answer(connection, json.dumps(self.health()) + "\n", "application/json")

    def _metrics(self, connection: ServerConnection, method: str) -> Response:
        if method != "GET":
            return _get_only(connection, method, METRICS_PATH)
        body, content_type = metrics.exposition(self.metrics.registry)
        return _answer(connection, body.decode("utf-8"), content_type)

    # --- WebSocket connections ---

    async def handle(self, connection: ServerConnection) -> None:
        if urlsplit(connection.request.path).path == PUBLISH_PATH:
            await self._serve(connection, (self.subscribers,), "subscriber", self._on_update,
                              logging.INFO)
            return
        try:
            client_id, stream_id = tokens.verify(self._token_secret,
                                                 _token(connection.request.path), self.cluster,
                                                 time.time())
        except tokens.TokenError as err:
            self.stats["refused"] += 1
            self.metrics.tokens_refused.inc()
            log.info("refused a viewer from %s: %s (%d)", _peer(connection), err.reason,
                     err.code)
            await connection.close(err.code, err.reason)
            return
        if self._too_many(connection):  # handshakes that were under way together
            await connection.close(closecodes.TOO_MANY, "too many connections from your address")
            return
        await self._serve_viewer(connection, client_id, self._stream(stream_id))

    async def _serve_viewer(self, connection: ServerConnection, client_id: str,
                            stream: Stream) -> None:
        """One live connection per client id: a newer one replaces the older. The viewer gets
        its stream's snapshot first, written before it joins the broadcasts (no await between),
        so no update can come between them or before them."""
        previous = self._viewer_of.get(client_id)
        if previous is not None:
            self.stats["replaced"] += 1
            log.info("viewer %r connected again from %s: closing its connection from %s",
                     client_id, _peer(connection), _peer(previous))
            self._close_later(previous, closecodes.REPLACED,
                              "replaced by a newer connection of this client")
        self._viewer_of[client_id] = connection
        address = _address(connection)
        self._per_address[address] += 1
        for data in stream.snapshot():
            broadcast([connection], data, text=True)
        try:
            await self._serve(connection, (self.viewers, stream.viewers),
                              f"viewer {client_id!r}", self._on_viewer_message, logging.DEBUG)
        finally:
            if self._viewer_of.get(client_id) is connection:
                del self._viewer_of[client_id]
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

    def _close_later(self, connection: ServerConnection, code: int, reason: str) -> None:
        """Close without waiting for it here; its handler then ends and forgets it."""
        self._leaving.add(connection)
        task = asyncio.create_task(self._close(connection, code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, connection: ServerConnection, code: int, reason: str) -> None:
        """The closing handshake, and the connection dropped if it takes longer than
        WS_CLOSE_TIMEOUT_S: websockets' close() first waits for the unsent data to drain,
        which for a viewer that stopped reading never happens."""
        try:
            await asyncio.wait_for(connection.close(code, reason), self.close_timeout_s)
        except TimeoutError:
            connection.transport.abort()

    async def _serve(self, connection, groups: tuple[set, ...], kind: str, on_message,
                     level: int) -> None:
        for group in groups:
            group.add(connection)
        log.log(level, "%s connected from %s; %d viewer(s), %d subscriber(s)", kind,
                _peer(connection), len(self.viewers), len(self.subscribers))
        try:
            async for message in connection:
                on_message(connection, message)
        except ConnectionClosed:
            pass
        finally:
            for group in groups:
                group.discard(connection)
            self._leaving.discard(connection)
            log.log(level, "%s from %s disconnected (code %s); %d viewer(s), %d subscriber(s)",
                    kind, _peer(connection), connection.close_code, len(self.viewers),
                    len(self.subscribers))

    def _on_viewer_message(self, connection: ServerConnection, _message) -> None:
        self.stats["from_viewers"] += 1
        log.debug("discarded a message from viewer %s", _peer(connection))

    def _on_update(self, connection: ServerConnection, message) -> None:
        try:
            if not isinstance(message, str):
                raise InvalidEvent("binary message (updates are text)")
            update = decode_window_update(message)
            stream = self._stream(update["stream_id"])
            verdict = stream.dedup.check(update)
        except (InvalidEvent, ValueError) as err:
            self.stats["invalid"] += 1
            self.metrics.updates_dropped.labels("invalid").inc()
            log.warning("skipped an invalid update from %s: %s (%d invalid so far)",
                        _peer(connection), err, self.stats["invalid"])
            return
        if verdict != WindowDeduplicator.NEW:
            self.stats[verdict] += 1
            self.metrics.updates_dropped.labels(verdict).inc()
            log.debug("dropped a %s update for window %s of %s", verdict,
                      update["window_start"], update["stream_id"])
            return
        data = message.encode("utf-8")
        stream.remember(update, data)
        self.stats["broadcast"] += 1
        if stream.viewers:  # a stream nobody watches here costs nothing more
            self._outbox.put_nowait((stream, update["window_start"], data))
        else:
            self.stats["unwatched"] += 1

    # --- broadcasting ---

    def start(self) -> None:
        """Start the broadcasting task (in the running event loop)."""
        self._outbox = asyncio.Queue()
        self._broadcaster = asyncio.create_task(self._broadcast_forever())

    async def stop(self) -> None:
        if self._broadcaster is not None:
            self._broadcaster.cancel()
            try:
                await self._broadcaster
            except asyncio.CancelledError:
                pass

    async def _broadcast_forever(self) -> None:
        while True:
            stream, window, data = await self._outbox.get()
            await self._broadcast(stream, window, data)
            await asyncio.sleep(0)  # let the connections' tasks run between broadcasts

    async def _broadcast(self, stream: Stream, window: str, data: bytes) -> None:
        """``data`` (encoded once) to every viewer of the stream connected now, a batch at a
        time."""
        started = time.perf_counter()
        viewers = list(stream.viewers)
        for first in range(0, len(viewers), self.broadcast_batch):
            if first:
                await asyncio.sleep(0)  # let the loop run between batches
            # Viewers that left meanwhile are skipped: broadcast() writes to open ones only.
            batch = self._keeping_up(viewers[first:first + self.broadcast_batch])
            broadcast(batch, data, text=True)
            self.metrics.messages.inc(len(batch))
        self.metrics.broadcasts.inc()
        self.metrics.duration.observe(time.perf_counter() - started)
        log.debug("broadcast window %s to %d viewer(s) in %.1f ms", window, len(viewers),
                  1000 * (time.perf_counter() - started))


    def _keeping_up(self, viewers: list[ServerConnection]) -> list[ServerConnection]:
        """The viewers whose unsent data is within the limit; the others are closed.

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
            self.stats["too_slow"] += 1
            self.metrics.slow_dropped.inc()
            log.info("closing a viewer from %s that does not keep up: %d bytes unsent",
                     _peer(viewer), unsent)
            self._close_later(viewer, closecodes.TOO_SLOW,
                              f"too slow: more than {self.max_unsent_bytes} bytes unsent")
        return keeping_up


def _get_only(connection: ServerConnection, method: str, path: str) -> Response:
    response = connection.respond(http.HTTPStatus.METHOD_NOT_ALLOWED,
                                  f"{method} is not allowed on {path}; use GET\n")
    response.headers["Allow"] = "GET"
    return response


def _answer(connection: ServerConnection, body: str, content_type: str) -> Response:
    response = connection.respond(http.HTTPStatus.OK, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type
    return response


def _token(path: str) -> str | None:
    """The token of the query string, if any."""
    values = parse_qs(urlsplit(path).query).get("token")
    return values[0] if values else None


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"


def _address(connection: ServerConnection) -> str:
    """The client's IP address (the limits per address count by it)."""
    address = connection.remote_address
    return address[0] if address else "?"


async def run(settings: config.Settings, cluster: int, key: str, token_secret: str,
              open_files: int) -> None:
    hub = Hub(settings, cluster, key, token_secret)
    hub.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    port = settings.ws_port(cluster)
    # No compression: broadcast() would compress each copy separately, and every compressed
    # connection holds zlib buffers.
    async with serve(hub.handle, settings.ws_host, port, process_request=hub.process_request,
                     **settings.ws_keepalive(), close_timeout=settings.ws_close_timeout_s,
                     compression=None, backlog=settings.ws_listen_backlog):
        log.info("ready: cluster %d serving viewers at ws://%s:%d%s, subscribers at %s, "
                 "health at %s, metrics at %s; open-file limit %d (one per connection)", cluster,
                 settings.ws_host, port, VIEWER_PATH, PUBLISH_PATH, HEALTH_PATH, METRICS_PATH,
                 open_files)
        await stop.wait()
        log.info("stopping: closing %d viewer and %d subscriber connection(s)",
                 len(hub.viewers), len(hub.subscribers))
        await hub.stop()
    log.info("stopped: %(broadcast)d update(s) broadcast, %(duplicate)d repeated, %(stale)d "
             "stale and %(invalid)d invalid dropped, %(unwatched)d of a stream nobody watched "
             "here, %(from_viewers)d viewer message(s) discarded, %(refused)d viewer(s) "
             "refused, %(replaced)d replaced, %(too_many)d over the limit of their address, "
             "%(too_slow)d too slow", hub.stats)


def parse_args(argv, settings: config.Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ws_server.py",
        description="WebSocket fan-out of window updates to one cluster's viewers. Listens on "
                    "WS_HOST, port WS_FIRST_PORT + N - 1; subscribers publish at /publish with the "
                    "subscriber key; GET /health reports the connection counts.")
    add_cluster_option(parser, settings)
    parser.add_argument("--host", default=settings.ws_host,
                        help=f"address to listen on (default {settings.ws_host})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    setup_logging("ws_server")
    # websockets logs every HTTP answer (each health check) at INFO; this server logs what
    # matters itself.
    logging.getLogger("websockets").setLevel(
        max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    settings = load_settings(log)
    args = parse_args(argv, settings)
    settings = dataclasses.replace(settings, ws_host=args.host)
    try:
        token_secret, key = secrets.token_secret_and_subscriber_key(settings)
    except (OSError, secrets.SecretError) as err:
        log.error("cannot use the secrets: %s", err)
        return 1
    try:
        asyncio.run(run(settings, args.cluster, key, token_secret, raise_open_file_limit()))
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            raise
        log.error("port %d on %s is already in use (is cluster %d's server running already?)",
                  settings.ws_port(args.cluster), settings.ws_host, args.cluster)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
