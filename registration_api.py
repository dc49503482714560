"""Registration of viewers: assigns each one a cluster, a WebSocket endpoint and a token.

    POST /register   {"client_id": "client_1", "stream_id": "main"}  ->  {"status": "success",
                     "cluster_id": "cluster2", "stream_id": "main",
                     "subscriber_endpoint": "ws://localhost:5003/?token=eyJ..."}
                     (stream_id may be left out: "main"; an unknown one is a 404)
    POST /deregister {"client_id": "client_1"}  ->  {"status": "success"}, or 404
    GET  /streams    [{"stream_id", "viewers", "last_window", "last_window_total"}, ...]
    POST /streams    {"stream_id": "final-2026"}  with "Authorization: Bearer <admin key>": 201
    DELETE /streams/ID                            with the admin key: 200, or 404
    GET  /clusters   [{"cluster_id", "endpoint", "healthy", "live_connections",
                     "registered_viewers"}, ...]
    GET  /health     {"status": "ok", "registered_viewers": N}
    GET  /metrics    Prometheus metrics: registrations, each cluster's health and load
    GET  /           the viewers' web page (emojistream/registration/web.py, static/)

The registry (emojistream/registration/registry.py) lives in memory, so the API is served by one granian
worker with several threads. Balancing, tokens and re-registration: docs/delivery.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import logging
import math
import os
import sys
import time
from urllib.parse import quote

from flask import Flask, request
from kafka.errors import KafkaError

from emojistream import config
from emojistream.common import kafka_clients, metrics, secrets, tokens, wsgi
from emojistream.common.events import (
    DEFAULT_STREAM,
    InvalidEvent,
    check_identifier,
    check_stream_id,
)
from emojistream.common.json_api import ApiError, add_json_error_handlers, json_body
from emojistream.common.lifecycle import load_settings
from emojistream.common.limits import RateLimiter
from emojistream.common.logs import setup_logging
from emojistream.common.streams import StreamCatalog, StreamWriter, UnknownStream
from emojistream.registration import web
from emojistream.registration.registry import (
    HealthMonitor,
    HttpProbe,
    NoClusterAvailable,
    Probe,
    Registry,
    RegistryFull,
    cluster_id,
)

log = logging.getLogger("registration_api")

REGISTRY = "registry"  # keys of the registry, the health monitor, the stream catalog, metrics
MONITOR = "health_monitor"
STREAMS = "streams"
METRICS = "metrics"
ENDPOINTS = ("POST /register, POST /deregister, GET /clusters, GET /streams, POST /streams, "
             "DELETE /streams/ID, GET /health and GET /metrics")
# How long POST /streams waits for the new stream to be known (read back from Kafka).
STREAM_KNOWN_TIMEOUT_S = 5.0


def endpoint_for(settings: config.Settings, cluster: int, token: str) -> str:
    base = settings.ws_public_url(cluster)
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}token={quote(token, safe='')}"


def check_client_id(body) -> str:
    """The client_id of a request body; ApiError(400) naming the problem. A client_id follows
    the rules of an event's user_id (it is sent as one)."""
    if not isinstance(body, dict):
        raise ApiError(400, 'body must be a JSON object like {"client_id": "..."}')
    if "client_id" not in body:
        raise ApiError(400, "missing field: client_id")
    try:
        check_identifier(body["client_id"], "client_id")
    except InvalidEvent as err:
        raise ApiError(400, str(err)) from None
    return body["client_id"]


def create_app(settings: config.Settings | None = None, registry: Registry | None = None,
               probe: Probe | None = None, poll: bool = True,
               token_secret: str | None = None, streams: StreamCatalog | None = None,
               admin_key: str | None = None) -> Flask:
    """The registration app. ``registry`` defaults to an empty one over the settings' clusters;
    ``probe`` (the health source) to HttpProbe. Every cluster is polled once before this
    returns; with ``poll`` a HealthMonitor then keeps polling in the background (stop it with
    ``app.extensions[MONITOR].stop()``). ``streams`` defaults to a catalog that follows the
    streams topic (one not started knows STREAMS only); the secrets default to the
    installation's."""
    settings = settings or config.load()
    if token_secret is None or admin_key is None:
        installed = secrets.all_secrets(settings)
        token_secret = token_secret or installed[secrets.TOKEN_SECRET]
        admin_key = admin_key or installed[secrets.ADMIN_KEY]
    streams = streams if streams is not None else StreamCatalog(settings).start()
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.registration_max_body_bytes
    registry = registry if registry is not None else Registry(
        settings.clusters, ttl_s=settings.token_ttl_s, max_viewers=settings.registry_max_viewers)
    monitor = HealthMonitor(registry, probe if probe is not None else HttpProbe(settings),
                            settings.ws_health_poll_s)
    app.extensions[REGISTRY] = registry
    app.extensions[MONITOR] = monitor
    app.extensions[STREAMS] = streams
    app.extensions[METRICS] = metrics.RegistrationMetrics(registry)
    _add_routes(app, settings, registry, monitor, token_secret, streams)
    _add_stream_routes(app, settings, registry, streams, admin_key)
    web.add_web_page(app, settings)
    add_json_error_handlers(app, log, ENDPOINTS)
    monitor.poll_all()
    if poll:
        monitor.start()
    return app


def _add_routes(app: Flask, settings: config.Settings, registry: Registry,
                monitor: HealthMonitor, secret: str, streams: StreamCatalog) -> None:
    limiter = RateLimiter(settings.registration_rate_per_address,
                          settings.registration_burst_per_address)

    @app.before_request
    def limit_registrations_per_address():
        if request.path not in ("/register", "/deregister"):
            return
        wait_s = limiter.take(request.remote_addr or "?")
        if wait_s is not None:
            raise ApiError(429, f"too many registrations from {request.remote_addr}: at most "
                                f"{settings.registration_burst_per_address} at once and "
                                f"{settings.registration_rate_per_address:g} a second "
                                "(REGISTRATION_BURST_PER_ADDRESS, "
                                "REGISTRATION_RATE_PER_ADDRESS)",
                           headers={"Retry-After": str(max(1, math.ceil(wait_s)))})

    @app.post("/register")
    def register():
        body = json_body()
        client_id = check_client_id(body)
        stream_id = known_stream(body, streams)
        current = registry.assignment(client_id)
        if current is not None and registry.is_healthy(current):
            monitor.recheck(current)  # it registers again: is its server still there?
        try:
            cluster, previous = registry.register(client_id)
        except (NoClusterAvailable, RegistryFull) as err:
            raise ApiError(503, str(err), headers={"Retry-After": "1"}) from None
        if previous is None:
            log.info("registered %r on %s", client_id, cluster_id(cluster))
        elif previous != cluster:
            log.info("moved %r from %s (down) to %s", client_id, cluster_id(previous),
                     cluster_id(cluster))
        token = tokens.issue(secret, client_id, cluster, settings.token_ttl_s, time.time(),
                             stream_id)
        app.extensions[METRICS].registrations.inc()
        return {"status": "success", "cluster_id": cluster_id(cluster), "stream_id": stream_id,
                "subscriber_endpoint": endpoint_for(settings, cluster, token)}

    @app.post("/deregister")
    def deregister():
        client_id = check_client_id(json_body())
        cluster = registry.deregister(client_id)
        if cluster is None:
            raise ApiError(404, f"client_id {client_id!r} is not registered")
        log.info("deregistered %r from %s", client_id, cluster_id(cluster))
        app.extensions[METRICS].deregistrations.inc()
        return {"status": "success"}

    @app.get("/clusters")
    def clusters():
        return [{"cluster_id": cluster_id(n), "endpoint": settings.ws_public_url(n),
                 "healthy": registry.is_healthy(n), "live_connections": registry.live_count(n),
                 "registered_viewers": registry.registered_count(n)}
                for n in registry.clusters]

    @app.get("/health")
    def health():
        return {"status": "ok", "registered_viewers": registry.total()}

    @app.get(metrics.PATH)
    def serve_metrics():
        body, content_type = metrics.exposition(app.extensions[METRICS].registry)
        return body, 200, {"Content-Type": content_type}


def worker_app() -> Flask:
    """The app of the server's one worker, from the environment's settings."""
    return create_app(config.load())


def known_stream(body: dict, streams: StreamCatalog) -> str:
    """The stream a request body names (default main); ApiError 400 for a malformed one, 404
    for an unknown one."""
    try:
        stream_id = check_stream_id(body.get("stream_id", DEFAULT_STREAM))
    except InvalidEvent as err:
        raise ApiError(400, str(err)) from None
    try:
        return streams.require(stream_id)
    except UnknownStream as err:
        raise ApiError(404, str(err)) from None


def _add_stream_routes(app: Flask, settings: config.Settings, registry: Registry,
                       streams: StreamCatalog, admin_key: str) -> None:
    writer: list[StreamWriter] = []  # made on first use: reading needs no Kafka producer

    def admin_only() -> None:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                presented.strip().encode("utf-8"), admin_key.encode("utf-8")):
            raise ApiError(401, "missing or wrong admin key (send Authorization: Bearer <key>; "
                                "the key is ADMIN_KEY, or VAR_DIR/secrets/admin.key)",
                           headers={"WWW-Authenticate": "Bearer"})

    def write(change) -> None:
        try:
            if not writer:
                writer.append(StreamWriter(settings))
            change(writer[0])
        except (KafkaError, kafka_clients.KafkaUnavailable) as err:
            raise ApiError(503, f"Kafka did not take the change ({err}); try again shortly",
                           headers={"Retry-After": "1"}) from None

    @app.get("/streams")
    def list_streams():
        return [{"stream_id": stream_id, **registry.stream_stats(stream_id)}
                for stream_id in streams.all()]

    @app.post("/streams")
    def add_stream():
        admin_only()
        body = json_body()
        if not isinstance(body, dict):
            raise ApiError(400, 'body must be a JSON object like {"stream_id": "..."}')
        try:
            stream_id = check_stream_id(body.get("stream_id"))
        except InvalidEvent as err:
            raise ApiError(400, str(err)) from None
        if streams.known(stream_id):
            raise ApiError(409, f"stream {stream_id!r} exists already")
        write(lambda w: w.add(stream_id))
        deadline = time.monotonic() + STREAM_KNOWN_TIMEOUT_S
        while not streams.known(stream_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info("added stream %r", stream_id)
        return {"status": "success", "stream_id": stream_id}, 201

    @app.delete("/streams/<stream_id>")
    def remove_stream(stream_id: str):
        admin_only()
        if stream_id in streams.configured:
            raise ApiError(409, f"stream {stream_id!r} is one of STREAMS: change the setting "
                                "to remove it")
        if not streams.known(stream_id):
            raise ApiError(404, str(UnknownStream(stream_id)))
        write(lambda w: w.remove(stream_id))
        log.info("removed stream %r", stream_id)
        return {"status": "success", "stream_id": stream_id}


def stop_monitor(app: Flask) -> None:
    """As the worker ends: stop its health polls and its stream catalog."""
    app.extensions[MONITOR].stop()
    app.extensions[STREAMS].stop()


def parse_args(argv, settings: config.Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="registration_api.py",
        description="Assigns viewers to clusters (POST /register, POST /deregister, "
                    "GET /clusters, GET /health). One server worker: the registry is in "
                    "memory. Options override REGISTRATION_HOST, REGISTRATION_PORT and "
                    "REGISTRATION_THREADS.")
    parser.add_argument("--host", default=settings.registration_host,
                        help=f"address to listen on (default {settings.registration_host})")
    parser.add_argument("--port", type=int, default=settings.registration_port,
                        help=f"port to listen on (default {settings.registration_port})")
    parser.add_argument("--threads", type=int, default=settings.registration_threads,
                        help=f"threads of the one worker (default "
                             f"{settings.registration_threads})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    setup_logging("registration_api")
    settings = load_settings(log)
    args = parse_args(argv, settings)
    settings = dataclasses.replace(settings, registration_host=args.host,
                                   registration_port=args.port,
                                   registration_threads=args.threads)
    try:
        secrets.token_secret_and_subscriber_key(settings)  # checked (and created) now
    except (OSError, secrets.SecretError) as err:
        log.error("cannot use the secrets: %s", err)
        return 1
    try:
        wsgi.check_port_free(settings.registration_host, settings.registration_port)
        log.info("listening on %s:%d (1 worker with %d threads), %d cluster(s): %s",
                 settings.registration_host, settings.registration_port,
                 settings.registration_threads, settings.cluster_count,
                 ", ".join(settings.ws_public_url(n) for n in settings.clusters))
        os.environ.update(config.to_environment(settings))  # the worker's settings
        wsgi.serve("registration_api:worker_app", host=settings.registration_host,
                   port=settings.registration_port, workers=1,
                   threads=settings.registration_threads,
                   worker_exit="registration_api:stop_monitor")
    except wsgi.PortInUse as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
