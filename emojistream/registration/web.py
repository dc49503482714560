"""The viewers' web page: static files (static/, no build step) served by the registration API.

    GET /               static/index.html: send reactions, watch the swarm (docs/web.md)
    GET /assets/FILE    the page's scripts and style sheet, from static/
    GET /config.json    {"api_url": ..., "registration_url": ..., "emojis": [...],
                         "window_seconds": N, ...}: what the page needs to know

The page holds no host name or port of its own: it asks config.json where the ingest API and the
registration API are, and POST /register where its WebSocket endpoint is. So it works under any
host name the registration API is reached at.

    add_web_page(app, settings)     adds these routes to a Flask app (the registration API's)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Flask, request, send_from_directory

from emojistream import topology
from emojistream.common import urls
from emojistream.common.settings import REPO_ROOT
from emojistream.registration.settings import RegistrationSettings

STATIC_DIR = REPO_ROOT / "static"
ASSETS_PATH = "/assets"

# The page loads its own scripts and styles only; it talks to the configured APIs and WebSocket
# endpoints, which may be on any host and port.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self' http: https: ws: wss:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])


def page_config(settings: RegistrationSettings, page_url: str) -> dict:
    """What config.json answers to a page loaded from ``page_url``."""
    page = urlsplit(page_url)
    if settings.api_public_url:
        api_url = settings.api_public_url.rstrip("/")
    elif settings.api_host in urls.WILDCARD_HOSTS and page.hostname:
        # The API listens on every address: the browser reaches it by the name it used for
        # the page.
        api_url = f"{page.scheme}://{urls.host_port(page.hostname, settings.api_port)}"
    else:
        api_url = topology.api_url(settings)
    if settings.registration_public_url:
        registration_url = settings.registration_public_url.rstrip("/")
    else:
        # Where the page came from: the registration API serves it, so it is reachable there
        # and same-origin.
        registration_url = f"{page.scheme}://{page.netloc}"
    return {
        "api_url": api_url,
        "registration_url": registration_url,
        "emojis": list(settings.allowed_emojis),
        "window_seconds": settings.window_seconds,
        "retry_initial_s": settings.viewer_retry_initial_s,
        "retry_max_s": settings.viewer_retry_max_s,
        "stats_interval_s": settings.web_stats_interval_s,
    }


def add_web_page(app: Flask, settings: RegistrationSettings, static_dir: Path = STATIC_DIR) -> None:
    """Serve the web page at / (with its assets and /config.json) from ``app``."""
    web = Blueprint("web_page", __name__, static_folder=str(static_dir),
                    static_url_path=ASSETS_PATH)

    @web.get("/")
    def index():
        response = send_from_directory(static_dir, "index.html", max_age=0)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @web.get("/config.json")
    def config_json():
        response = app.json.response(page_config(settings, request.host_url))
        response.headers["Cache-Control"] = "no-store"
        return response

    @web.after_request
    def no_sniffing(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    app.register_blueprint(web)
