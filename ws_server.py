"""Cluster N's WebSocket server: fans window updates out to the cluster's viewers.

    ws_server.py --cluster N     listens on WS_HOST, port WS_FIRST_PORT + N - 1

    ws://HOST:PORT/?token=T      viewers, with the token the registration API gave them; closed
                                 with 4401 (missing, invalid or expired token) or 4403 (a token
                                 for another cluster). What viewers send is discarded
    ws://HOST:PORT/publish       the cluster's subscribers, with "Authorization: Bearer <key>"
                                 (HTTP 401 otherwise); every text message is a window update
    GET http://HOST:PORT/health  {"cluster": N, "status": "ok", "viewers": V, "subscribers": S}

One asyncio event loop, no threads: the first copy of each version of a window is broadcast in
batches of WS_BROADCAST_BATCH viewers, the second copy (from the other subscriber) dropped.
Deduplication, heartbeats and scale: docs/delivery.md.
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
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from emojistream import config, secrets, tokens
from emojistream.dedup import WindowDeduplicator
from emojistream.events import InvalidEvent, decode_window_update
from emojistream.lifecycle import add_cluster_option, load_settings, raise_open_file_limit
from emojistream.logs import setup_logging

log = logging.getLogger("ws_server")

VIEWER_PATH = "/"
PUBLISH_PATH = "/publish"
HEALTH_PATH = "/health"


class Hub:
    """The cluster's connections and what flows between them."""

    def __init__(self, cluster: int, subscriber_key: str, token_secret: str,
                 dedup_windows: int, broadcast_batch: int = 250):
        self.cluster = cluster
        self.broadcast_batch = max(1, broadcast_batch)
        # Updates waiting to be broadcast, in order; created by start() in the running loop.
        self._outbox: asyncio.Queue | None = None
        self._broadcaster: asyncio.Task | None = None
        self._key = subscriber_key.encode("utf-8")
        self._token_secret = token_secret
        self.viewers: set[ServerConnection] = set()
        self.subscribers: set[ServerConnection] = set()
        self.dedup = WindowDeduplicator(dedup_windows)
        self.stats = {"broadcast": 0, "duplicate": 0, "stale": 0, "invalid": 0,
                      "from_viewers": 0, "refused": 0}

    # --- HTTP, before the WebSocket handshake ---

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == HEALTH_PATH:
            return self._health(connection, request.method)
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
        return None

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, presented = headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode("utf-8"), self._key)

    def health(self) -> dict:
        return {"cluster": self.cluster, "status": "ok", "viewers": len(self.viewers),
                "subscribers": len(self.subscribers)}

    def _health(self, connection: ServerConnection, method: str) -> Response:
        if method != "GET":
            response = connection.respond(http.HTTPStatus.METHOD_NOT_ALLOWED,
                                          f"{method} is not allowed on {HEALTH_PATH}; use GET\n")
            response.headers["Allow"] = "GET"
            return response
        response = connection.respond(http.HTTPStatus.OK, json.dumps(self.health()) + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    # --- WebSocket connections ---

    async def handle(self, connection: ServerConnection) -> None:
        if urlsplit(connection.request.path).path == PUBLISH_PATH:
            await self._serve(connection, self.subscribers, "subscriber", self._on_update,
                              logging.INFO)
            return
        try:
            client_id = tokens.verify(self._token_secret, _token(connection.request.path),
                                      self.cluster, time.time())
        except tokens.TokenError as err:
            self.stats["refused"] += 1
            log.info("refused a viewer from %s: %s (%d)", _peer(connection), err.reason,
                     err.code)
            await connection.close(err.code, err.reason)
            return
        await self._serve(connection, self.viewers, f"viewer {client_id!r}",
                          self._on_viewer_message, logging.DEBUG)

    async def _serve(self, connection, group: set, kind: str, on_message, level: int) -> None:
        group.add(connection)
        log.log(level, "%s connected from %s; %d viewer(s), %d subscriber(s)", kind,
                _peer(connection), len(self.viewers), len(self.subscribers))
        try:
            async for message in connection:
                on_message(connection, message)
        except ConnectionClosed:
            pass
        finally:
            group.discard(connection)
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
            verdict = self.dedup.check(update)
        except (InvalidEvent, ValueError) as err:
            self.stats["invalid"] += 1
            log.warning("skipped an invalid update from %s: %s (%d invalid so far)",
                        _peer(connection), err, self.stats["invalid"])
            return
        if verdict != WindowDeduplicator.NEW:
            self.stats[verdict] += 1
            log.debug("dropped a %s update for window %s", verdict, update["window_start"])
            return
        self._outbox.put_nowait((update["window_start"], message.encode("utf-8")))
        self.stats["broadcast"] += 1

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
            window, data = await self._outbox.get()
            await self._broadcast(window, data)

    async def _broadcast(self, window: str, data: bytes) -> None:
        """``data`` (encoded once) to every viewer connected now, a batch at a time."""
        started = time.perf_counter()
        viewers = list(self.viewers)
        for first in range(0, len(viewers), self.broadcast_batch):
            if first:
                await asyncio.sleep(0)  # let the loop run between batches
            # Viewers that left meanwhile are skipped: broadcast() writes to open ones only.
            broadcast(viewers[first:first + self.broadcast_batch], data, text=True)
        log.debug("broadcast window %s to %d viewer(s) in %.1f ms", window, len(viewers),
                  1000 * (time.perf_counter() - started))


def _token(path: str) -> str | None:
    """The token of the query string, if any."""
    values = parse_qs(urlsplit(path).query).get("token")
    return values[0] if values else None


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"


async def run(settings: config.Settings, cluster: int, key: str, token_secret: str,
              open_files: int) -> None:
    hub = Hub(cluster, key, token_secret, settings.ws_dedup_windows,
              settings.ws_broadcast_batch)
    hub.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    port = settings.ws_port(cluster)
    # No compression: broadcast() would compress each copy separately, and every compressed
    # connection holds zlib buffers.
    async with serve(hub.handle, settings.ws_host, port, process_request=hub.process_request,
                     **settings.ws_keepalive(),
                     compression=None, backlog=settings.ws_listen_backlog):
        log.info("ready: cluster %d serving viewers at ws://%s:%d%s, subscribers at %s, "
                 "health at %s; open-file limit %d (one per connection)", cluster,
                 settings.ws_host, port, VIEWER_PATH, PUBLISH_PATH, HEALTH_PATH, open_files)
        await stop.wait()
        log.info("stopping: closing %d viewer and %d subscriber connection(s)",
                 len(hub.viewers), len(hub.subscribers))
        await hub.stop()
    log.info("stopped: %(broadcast)d update(s) broadcast, %(duplicate)d repeated, %(stale)d "
             "stale and %(invalid)d invalid dropped, %(from_viewers)d viewer message(s) "
             "discarded, %(refused)d viewer(s) refused", hub.stats)


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
        key = secrets.subscriber_key(settings)
        token_secret = secrets.token_secret(settings)
    except (OSError, secrets.SecretError) as err:
        log.error("cannot read the subscriber key or the token secret: %s", err)
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
