"""ws_server.py --cluster N: one asyncio event loop, no threads, on two listeners: the viewers'
(WS_HOST, WS_FIRST_PORT + N - 1; wss:// with WS_TLS_CERT and WS_TLS_KEY) and the subscribers'
(WS_PUBLISH_HOST, loopback by default; WS_PUBLISH_FIRST_PORT + N - 1, topology.ws_publish_port):

    ws://HOST:PORT/?token=T      viewers, with the token the registration API gave them; closed
                                 with 4401 (missing, invalid or expired token) or 4403 (a token
                                 for another cluster). What viewers send is discarded. /publish
                                 is refused here (HTTP 403)
    ws://HOST:PORT/?token=T&since=S&presence=0
                                 recovery: {"type": "recovery", ...}, then every held window
                                 after S. Every update carries "watching" (the stream's viewers
                                 on every server) unless presence=0 (docs/delivery.md; a
                                 malformed since or presence: HTTP 400)
    ws://PUBLISH_HOST:PUBLISH_PORT/publish
                                 the cluster's subscribers, with "Authorization: Bearer <key>"
                                 (HTTP 401 otherwise); every text message is a window update
    GET http://HOST:PORT/health  {"cluster": N, "status": "ok", "viewers": V, "subscribers": S,
                                  "streams": {ID: {"viewers": V, "last_window": START,
                                                   "last_window_total": T}, ...}}
                                 (on both listeners)
    GET http://HOST:PORT/metrics Prometheus metrics (emojistream/delivery/metrics.py; both)

What viewers receive: README.md; deduplication, limits, heartbeats and scale: docs/delivery.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import logging
import signal
import ssl
from collections.abc import Callable
from functools import partial

from websockets.asyncio.server import serve

from emojistream import topology
from emojistream.common import secrets
from emojistream.common.lifecycle import add_cluster_option, load_settings, raise_open_file_limit
from emojistream.common.logs import setup_logging
from emojistream.delivery.hub import PUBLISH_PATH, VIEWER_PATH, Hub
from emojistream.delivery.routes import HEALTH_PATH, METRICS_PATH, process_request
from emojistream.delivery.settings import DeliverySettings

log = logging.getLogger("ws_server")

COMPRESSION = {"none": None, "deflate": "deflate"}  # WS_COMPRESSION -> websockets' compression


async def run(settings: DeliverySettings, cluster: int, key: str, token_secret: str,
              open_files: int, tls: ssl.SSLContext | None = None) -> None:
    hub = Hub(settings, cluster, key, token_secret)
    hub.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    port = topology.ws_port(settings, cluster)
    publish_port = topology.ws_publish_port(settings, cluster)
    # Compression (WS_COMPRESSION=deflate) is off by default: broadcast() compresses each copy
    # separately, and every compressed connection holds zlib buffers (docs/delivery.md).
    options = dict(**settings.ws_keepalive(), close_timeout=settings.ws_close_timeout_s)
    async with serve(hub.handle, settings.ws_host, port, ssl=tls,
                     process_request=partial(process_request, hub),
                     compression=COMPRESSION[settings.ws_compression],
                     backlog=settings.ws_listen_backlog, **options), \
            serve(hub.handle, settings.ws_publish_host, publish_port,
                  process_request=partial(process_request, hub, publish=True),
                  compression=None, **options):
        log.info("ready: cluster %d serving viewers at %s://%s:%d%s, subscribers at "
                 "ws://%s:%d%s, health at %s, metrics at %s; open-file limit %d (one per "
                 "connection); event loop %s", cluster, "wss" if tls else "ws", settings.ws_host,
                 port, VIEWER_PATH, settings.ws_publish_host, publish_port, PUBLISH_PATH,
                 HEALTH_PATH, METRICS_PATH, open_files, settings.ws_event_loop)
        await stop.wait()
        log.info("stopping: closing %d viewer and %d subscriber connection(s)",
                 len(hub.viewers), len(hub.subscribers))
        await hub.stop()
    log.info("stopped: %s", hub.metrics.summary())


def tls_context(settings: DeliverySettings) -> ssl.SSLContext | None:
    """The viewers' listener's TLS (WS_TLS_CERT and WS_TLS_KEY, PEM files), or None."""
    if not settings.ws_tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.ws_tls_cert, settings.ws_tls_key)
    return context


def loop_factory(settings: DeliverySettings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """WS_EVENT_LOOP's loop: uvloop's, or None (asyncio's default loop)."""
    if settings.ws_event_loop == "uvloop":
        import uvloop  # only with WS_EVENT_LOOP=uvloop

        return uvloop.new_event_loop
    return None


def main(argv=None) -> int:
    setup_logging("ws_server")
    # websockets logs every HTTP answer (each health check) at INFO; this server logs what
    # matters itself.
    logging.getLogger("websockets").setLevel(
        max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    settings = load_settings(log, DeliverySettings)
    parser = argparse.ArgumentParser(
        prog="ws_server.py",
        description="WebSocket fan-out of window updates to one cluster's viewers. Listens on "
                    "WS_HOST, port WS_FIRST_PORT + N - 1; subscribers publish at /publish with the "
                    "subscriber key on a listener of their own (WS_PUBLISH_HOST, loopback by "
                    "default); GET /health reports the connection counts.")
    add_cluster_option(parser, settings)
    parser.add_argument("--host", default=settings.ws_host,
                        help=f"address to listen on (default {settings.ws_host})")
    args = parser.parse_args(argv)
    settings = dataclasses.replace(settings, ws_host=args.host)
    if settings.ws_compression not in COMPRESSION:
        log.error("WS_COMPRESSION must be one of %s, got %r", ", ".join(COMPRESSION),
                  settings.ws_compression)
        return 2
    try:
        token_secret, key = secrets.token_secret_and_subscriber_key(settings)
    except (OSError, secrets.SecretError) as err:
        log.error("cannot use the secrets: %s", err)
        return 1
    try:
        tls = tls_context(settings)
    except (OSError, ssl.SSLError) as err:
        log.error("cannot use WS_TLS_CERT=%s and WS_TLS_KEY=%s: %s", settings.ws_tls_cert,
                  settings.ws_tls_key, err)
        return 1
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
            runner.run(run(settings, args.cluster, key, token_secret, raise_open_file_limit(),
                           tls))
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            raise
        log.error("port %d on %s or %d on %s is already in use (is cluster %d's server running "
                  "already?)", topology.ws_port(settings, args.cluster), settings.ws_host,
                  topology.ws_publish_port(settings, args.cluster), settings.ws_publish_host,
                  args.cluster)
        return 1
    return 0
