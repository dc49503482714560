"""The registration API's Flask app: the routes of README.md#registration-tokens-and-reconnection
and #live-streams (stream_routes.py), GET /health {"status": "ok", "registered_viewers": N},
GET /metrics, and the live page at / (web.py).

The registry (registry.py) lives in memory, so the API is served by one granian worker with
several threads. Balancing, tokens and re-registration: docs/delivery.md.
"""

from __future__ import annotations

import logging
import math
import time
from urllib.parse import quote

from flask import Flask, request

from emojistream import topology
from emojistream.common import metrics, secrets, tokens
from emojistream.common.events import InvalidEvent, check_identifier
from emojistream.common.json_api import ApiError, add_json_error_handlers, json_body
from emojistream.common.limits import RateLimiter
from emojistream.common.refusals import RefusalLog
from emojistream.common.settings import load_from
from emojistream.common.streams import StreamCatalog
from emojistream.registration import web
from emojistream.registration.metrics import RegistrationMetrics
from emojistream.registration.registry import (
    HealthMonitor,
    HttpProbe,
    NoClusterAvailable,
    Probe,
    Registry,
    RegistryFull,
    cluster_id,
)
from emojistream.registration.settings import RegistrationSettings
from emojistream.registration.stream_routes import add_stream_routes, known_stream

log = logging.getLogger("registration_api")

REGISTRY = "registry"  # keys of the registry, the health monitor, the stream catalog, metrics
MONITOR = "health_monitor"
STREAMS = "streams"
METRICS = "metrics"
REFUSALS = "refusals"  # the refused clients' log lines (common/refusals.py)
ENDPOINTS = ("POST /register, POST /deregister, GET /clusters, GET /streams, POST /streams, "
             "DELETE /streams/ID, GET /health and GET /metrics")


def endpoint_for(settings: RegistrationSettings, cluster: int, token: str) -> str:
    base = topology.ws_public_url(settings, cluster)
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


def create_app(settings: RegistrationSettings | None = None, registry: Registry | None = None,
               probe: Probe | None = None, poll: bool = True,
               token_secret: str | None = None, streams: StreamCatalog | None = None,
               admin_key: str | None = None) -> Flask:
    """The registration app. ``registry`` defaults to an empty one over the settings' clusters;
    ``probe`` (the health source) to HttpProbe. Every cluster is polled once before this
    returns; with ``poll`` a HealthMonitor then keeps polling in the background (stop it with
    ``app.extensions[MONITOR].stop()``). ``streams`` defaults to a catalog that follows the
    streams topic (one not started knows STREAMS only); the secrets default to the
    installation's."""
    settings = settings if settings is not None else load_from(RegistrationSettings)
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
    app.extensions[METRICS] = RegistrationMetrics(registry)
    refusals = app.extensions[REFUSALS] = RefusalLog(log, settings.refusals_log_interval_s)
    _add_routes(app, settings, registry, monitor, token_secret, streams)
    add_stream_routes(app, settings, registry, streams, admin_key)
    web.add_web_page(app, settings)
    add_json_error_handlers(app, log, ENDPOINTS)
    monitor.poll_all()
    if poll:
        monitor.start()
        refusals.start_thread()
    return app


def _add_routes(app: Flask, settings: RegistrationSettings, registry: Registry,
                monitor: HealthMonitor, secret: str, streams: StreamCatalog) -> None:
    limiter = RateLimiter(settings.registration_rate_per_address,
                          settings.registration_burst_per_address)

    @app.before_request
    def limit_registrations_per_address():
        if request.path not in ("/register", "/deregister"):
            return
        wait_s = limiter.take(request.remote_addr or "?")
        if wait_s is not None:
            app.extensions[REFUSALS].refused("rate limited (429)", request.remote_addr or "?")
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
        return [{"cluster_id": cluster_id(n), "endpoint": topology.ws_public_url(settings, n),
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
