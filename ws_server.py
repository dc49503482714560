"""Cluster N's WebSocket server: fans window updates out to the cluster's viewers.

    ws://HOST:PORT/           viewers (the query string may carry client_id); what they send is
                              read and discarded, never forwarded to anyone
    ws://HOST:PORT/publish    the cluster's subscribers, with "Authorization: Bearer <key>"
                              (secrets.subscriber_key); a wrong or missing key is refused with
                              HTTP 401. Every text message must be a window update
    GET http://HOST:PORT/health   {"cluster": N, "status": "ok", "viewers": V, "subscribers": S}

An update is broadcast to every connected viewer, unless it is identical to the last one sent
for its window: both subscribers of a cluster may deliver the same record (redelivery after a
failover), and viewers should see it once. A different update for a window is sent again; the
latest for a window replaces the earlier ones. One asyncio event loop, no threads.
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
from collections import OrderedDict
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from emojistream import config, secrets
from emojistream.events import InvalidEvent, decode_window_update
from emojistream.logs import setup_logging

log = logging.getLogger("ws_server")

VIEWER_PATH = "/"
PUBLISH_PATH = "/publish"
HEALTH_PATH = "/health"


class WindowDeduplicator:
    """Remembers the last update sent for each of the ``capacity`` most recent windows."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._last: OrderedDict[str, dict] = OrderedDict()

    def is_new(self, update: dict) -> bool:
        """True (and remembered) unless ``update`` equals the last one sent for its window."""
        window = update["window_start"]
        if self._last.get(window) == update:
            return False
        self._last[window] = update
        self._last.move_to_end(window)
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)
        return True


class Hub:
    """The cluster's connections and what flows between them."""

    def __init__(self, cluster: int, subscriber_key: str, dedup_windows: int):
        self.cluster = cluster
        self._key = subscriber_key.encode("utf-8")
        self.viewers: set[ServerConnection] = set()
        self.subscribers: set[ServerConnection] = set()
        self.dedup = WindowDeduplicator(dedup_windows)
        self.stats = {"broadcast": 0, "duplicate": 0, "invalid": 0, "from_viewers": 0}

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
            await self._serve(connection, self.subscribers, "subscriber", self._on_update)
        else:
            await self._serve(connection, self.viewers, "viewer", self._on_viewer_message)

    async def _serve(self, connection, group: set, kind: str, on_message) -> None:
        group.add(connection)
        log.info("%s connected from %s (%s); %d viewer(s), %d subscriber(s)", kind,
                 _peer(connection), connection.request.path, len(self.viewers),
                 len(self.subscribers))
        try:
            async for message in connection:
                on_message(connection, message)
        except ConnectionClosed:
            pass
        finally:
            group.discard(connection)
            log.info("%s from %s disconnected (code %s); %d viewer(s), %d subscriber(s)", kind,
                     _peer(connection), connection.close_code, len(self.viewers),
                     len(self.subscribers))

    def _on_viewer_message(self, connection: ServerConnection, _message) -> None:
        self.stats["from_viewers"] += 1
        log.debug("discarded a message from viewer %s", _peer(connection))

    def _on_update(self, connection: ServerConnection, message) -> None:
        try:
            if not isinstance(message, str):
                raise InvalidEvent("binary message (updates are text)")
            update = decode_window_update(message)
        except InvalidEvent as err:
            self.stats["invalid"] += 1
            log.warning("skipped an invalid update from %s: %s", _peer(connection), err)
            return
        if not self.dedup.is_new(update):
            self.stats["duplicate"] += 1
            log.debug("dropped a repeated update for window %s", update["window_start"])
            return
        broadcast(self.viewers, message)
        self.stats["broadcast"] += 1


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"


def keepalive(seconds: float) -> float | None:
    """websockets' interval/timeout argument: None (disabled) for 0."""
    return seconds if seconds > 0 else None


async def run(settings: config.Settings, cluster: int, key: str) -> None:
    hub = Hub(cluster, key, settings.ws_dedup_windows)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    port = settings.ws_port(cluster)
    async with serve(hub.handle, settings.ws_host, port, process_request=hub.process_request,
                     ping_interval=keepalive(settings.ws_ping_interval_s),
                     ping_timeout=keepalive(settings.ws_ping_timeout_s)):
        log.info("ready: cluster %d serving viewers at ws://%s:%d%s, subscribers at %s, "
                 "health at %s", cluster, settings.ws_host, port, VIEWER_PATH, PUBLISH_PATH,
                 HEALTH_PATH)
        await stop.wait()
        log.info("stopping: closing %d viewer and %d subscriber connection(s)",
                 len(hub.viewers), len(hub.subscribers))
    log.info("stopped: %(broadcast)d update(s) broadcast, %(duplicate)d repeated and "
             "%(invalid)d invalid dropped, %(from_viewers)d viewer message(s) discarded",
             hub.stats)


def parse_args(argv, settings: config.Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ws_server.py",
        description="WebSocket fan-out of window updates to one cluster's viewers. Listens on "
                    "WS_HOST, port WS_BASE_PORT + N; subscribers publish at /publish with the "
                    "subscriber key; GET /health reports the connection counts.")
    parser.add_argument("--cluster", type=int, required=True, metavar="N",
                        help=f"cluster number, 1 to {settings.cluster_count}")
    parser.add_argument("--host", default=settings.ws_host,
                        help=f"address to listen on (default {settings.ws_host})")
    args = parser.parse_args(argv)
    if args.cluster not in settings.clusters:
        parser.error(f"--cluster must be between 1 and {settings.cluster_count} (CLUSTER_COUNT)")
    return args


def main(argv=None) -> int:
    setup_logging("ws_server")
    # websockets logs every HTTP answer (each health check) at INFO; this server logs what
    # matters itself.
    logging.getLogger("websockets").setLevel(
        max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    try:
        settings = config.load()
    except config.ConfigError as err:
        log.error("%s", err)
        return 2
    args = parse_args(argv, settings)
    settings = dataclasses.replace(settings, ws_host=args.host)
    try:
        key = secrets.subscriber_key(settings)
    except (OSError, secrets.SecretError) as err:
        log.error("cannot read the subscriber key: %s", err)
        return 1
    try:
        asyncio.run(run(settings, args.cluster, key))
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            raise
        log.error("port %d on %s is already in use (is cluster %d's server running already?)",
                  settings.ws_port(args.cluster), settings.ws_host, args.cluster)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
