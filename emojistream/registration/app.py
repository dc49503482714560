"""The registration API's Flask app: the routes of README.md#registration-tokens-and-reconnection
and #live-streams (stream_routes.py), a stream's history (history_routes.py), GET /health
{"status": "ok", "live_viewers": N, "healthy_clusters": K}, GET /metrics, the live page at /
(web.py), and GET /openapi.json (openapi.json beside this file: every route, answers, errors).

Stateless: no viewer is remembered. A token carries everything (client id, cluster, stream,
session); a viewer that registers again presents its previous token to keep its session and
its healthy cluster. So any number of processes (REGISTRATION_WORKERS granian workers, or
processes on several hosts) answer any request, each balancing on the WebSocket servers' live
connection counts that it polls itself. Balancing, tokens, sessions: docs/delivery.md.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from urllib.parse import quote

from flask import Flask, request

from emojistream import topology
from emojistream.common import metrics, secrets, tokens
from emojistream.common.events import InvalidEvent, check_identifier, json_type
from emojistream.common.json_api import (
    ApiError,
    add_json_error_handlers,
    add_openapi_route,
    json_body,
)
from emojistream.common.limits import RateLimiter
from emojistream.common.refusals import RefusalLog
from emojistream.common.settings import load_from
from emojistream.common.streams import StreamCatalog
from emojistream.registration import web
from emojistream.registration.balancer import (
    Balancer,
    HealthMonitor,
    HttpProbe,
    NoClusterAvailable,
    Probe,
    cluster_id,
)
from emojistream.registration.history_routes import add_history_routes
from emojistream.registration.metrics import RegistrationMetrics
from emojistream.registration.settings import RegistrationSettings
from emojistream.registration.stream_routes import add_stream_routes, known_stream

log = logging.getLogger("registration_api")

BALANCER = "balancer"  # keys of the balancer, the health monitor, the stream catalog, metrics
MONITOR = "health_monitor"
STREAMS = "streams"
METRICS = "metrics"
REFUSALS = "refusals"  # the refused clients' log lines (common/refusals.py)
ENDPOINTS = ("POST /register, POST /deregister, GET /clusters, GET /streams, POST /streams, "
             "DELETE /streams/ID, GET /streams/ID/windows, GET /streams/ID/moments, GET /health, "
             "GET /metrics and GET /openapi.json")
OPENAPI_DOCUMENT = Path(__file__).with_name("openapi.json")


def endpoint_for(settings: RegistrationSettings, cluster: int, token: str) -> str:
    base = topology.ws_public_url(settings, cluster)
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}token={quote(token, safe='')}"


def presented_token(body: dict) -> str | None:
    """The previous token a re-registering viewer presents (``"token"``), if any; ApiError(400)
    for one that is not a string."""
    token = body.get("token")
    if token is not None and not isinstance(token, str):
        raise ApiError(400, f"token must be a string (the one the previous /register answered), "
                            f"got {json_type(token)}")
    return token or None


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


def create_app(settings: RegistrationSettings | None = None, balancer: Balancer | None = None,
               probe: Probe | None = None, poll: bool = True,
               token_secret: str | None = None, streams: StreamCatalog | None = None,
               admin_key: str | None = None) -> Flask:
    """The registration app. ``balancer`` defaults to one over the settings' clusters;
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
    balancer = balancer if balancer is not None else Balancer(settings.clusters)
    monitor = HealthMonitor(balancer, probe if probe is not None else HttpProbe(settings),
                            settings.ws_health_poll_s)
    app.extensions[BALANCER] = balancer
    app.extensions[MONITOR] = monitor
    app.extensions[STREAMS] = streams
    app.extensions[METRICS] = RegistrationMetrics(balancer)
    refusals = app.extensions[REFUSALS] = RefusalLog(log, settings.refusals_log_interval_s)
    _add_routes(app, settings, balancer, monitor, token_secret, streams)
    add_stream_routes(app, settings, balancer, streams, admin_key)
    add_history_routes(app, settings, streams)
    web.add_web_page(app, settings)
    add_openapi_route(app, OPENAPI_DOCUMENT)
    add_json_error_handlers(app, log, ENDPOINTS)
    monitor.poll_all()
    if poll:
        monitor.start()
        refusals.start_thread()
    return app


def _add_routes(app: Flask, settings: RegistrationSettings, balancer: Balancer,
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

    def session_of(client_id: str, token: str | None, now: float) -> tuple[str | None, int | None]:
        """The session and cluster of the viewer's previous token, when it is genuine, has not
        expired and is ``client_id``'s; else (None, None): a new session."""
        if token is None:
            return None, None
        try:
            claims = tokens.read(secret, token, now)
        except tokens.TokenError as err:
            log.debug("a new session for %r: its previous token is refused (%s)", client_id,
                      err.reason)
            return None, None
        if claims.client_id != client_id:
            log.debug("a new session for %r: its previous token is another client's", client_id)
            return None, None
        return claims.session, claims.cluster

    @app.post("/register")
    def register():
        body = json_body()
        client_id = check_client_id(body)
        previous_token = presented_token(body)
        stream_id = known_stream(body, streams)
        now = time.time()
        session, kept = session_of(client_id, previous_token, now)
        if kept is not None and kept in balancer.clusters and balancer.is_healthy(kept):
            monitor.recheck(kept)  # it registers again: is its server still there?
        try:
            cluster = balancer.assign(keep=kept)
        except NoClusterAvailable as err:
            raise ApiError(503, str(err), headers={"Retry-After": "1"}) from None
        resumed = session is not None
        if not resumed:
            session = tokens.new_session()
        if kept is not None and kept != cluster:
            log.info("moved %r from %s to %s", client_id, cluster_id(kept), cluster_id(cluster))
        else:
            log.debug("registered %r on %s (%s session)", client_id, cluster_id(cluster),
                      "its" if resumed else "a new")
        token = tokens.issue(secret, client_id, cluster, settings.token_ttl_s, now, stream_id,
                             session)
        app.extensions[METRICS].registrations.labels("resumed" if resumed else "new").inc()
        return {"status": "success", "cluster_id": cluster_id(cluster), "stream_id": stream_id,
                "subscriber_endpoint": endpoint_for(settings, cluster, token), "token": token,
                "session": "resumed" if resumed else "new"}

    @app.post("/deregister")
    def deregister():
        """A no-op kept for older clients: nothing is remembered, so there is nothing to forget
        (a viewer leaves by closing its connection)."""
        check_client_id(json_body())
        app.extensions[METRICS].deregistrations.inc()
        return {"status": "success"}

    @app.get("/clusters")
    def clusters():
        return [{"cluster_id": cluster_id(n), "endpoint": topology.ws_public_url(settings, n),
                 "healthy": balancer.is_healthy(n), "live_connections": balancer.live_count(n)}
                for n in balancer.clusters]

    @app.get("/health")
    def health():
        return {"status": "ok", "live_viewers": balancer.live_total(),
                "healthy_clusters": balancer.healthy_count()}

    @app.get(metrics.PATH)
    def serve_metrics():
        body, content_type = metrics.exposition(app.extensions[METRICS].scrape_registry())
        return body, 200, {"Content-Type": content_type}
