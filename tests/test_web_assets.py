"""The viewers' web page without a browser: its routes and config.json, the static files' rules
(no HTML from data, no host names), and the ingest API's CORS answers. (tests/test_web_page.py
drives the page in Chromium against the whole system.)"""

from __future__ import annotations

import re
import socket
from datetime import UTC, datetime

import pytest
from flask import Flask

from emojistream import config, topology
from emojistream.common.events import format_timestamp
from emojistream.ingest.app import create_app as create_api_app
from emojistream.registration import app as registration_api
from emojistream.registration.web import STATIC_DIR, add_web_page, page_config
from tests.services import REPO_ROOT, isolated_env

# --- the page's routes, without a browser ---------------------------------------------------

@pytest.fixture
def web_client():
    app = Flask("web_test")
    add_web_page(app, config.load({}, api_port=5000))
    return app.test_client()


def test_the_page_is_served_at_the_root_with_a_strict_policy(web_client):
    response = web_client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert 'src="assets/app.js"' in response.get_data(as_text=True)
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'self'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("name, mimetype", [("app.js", "text/javascript"),
                                            ("viewer.js", "text/javascript"),
                                            ("sender.js", "text/javascript"),
                                            ("view.js", "text/javascript"),
                                            ("style.css", "text/css")])
def test_assets_are_served_with_their_types(web_client, name, mimetype):
    response = web_client.get(f"/assets/{name}")
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert response.get_data() == (STATIC_DIR / name).read_bytes()


def test_an_unknown_asset_is_a_404(web_client):
    assert web_client.get("/assets/nope.js").status_code == 404


def test_config_json_comes_from_the_settings_and_the_pages_own_address(web_client):
    response = web_client.get("/config.json", base_url="http://stream.example:5001")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.get_json() == {
        "api_url": "http://localhost:5000",
        "registration_url": "http://stream.example:5001",
        "emojis": list(config.load({}).allowed_emojis),
        "window_seconds": 2,
        "retry_initial_s": 0.5,
        "retry_max_s": 8.0,
        "stats_interval_s": 5.0,
    }


def test_public_urls_override_the_derived_ones():
    settings = config.load({"API_PUBLIC_URL": "https://api.example/ingest/",
                            "REGISTRATION_PUBLIC_URL": "https://join.example/",
                            "EMOJIS": "🔥,😂", "WINDOW_SECONDS": "5"})
    answer = page_config(settings, "http://anything:5001/")
    assert answer["api_url"] == "https://api.example/ingest"
    assert answer["registration_url"] == "https://join.example"
    assert answer["emojis"] == ["🔥", "😂"]
    assert answer["window_seconds"] == 5


@pytest.mark.parametrize("api_host", ["0.0.0.0", "::"])
def test_an_api_on_every_address_is_reached_by_the_pages_host_name(api_host):
    settings = config.load({"API_HOST": api_host, "API_PORT": "5400"})
    assert page_config(settings, "http://stream.example:5001/")["api_url"] == \
        "http://stream.example:5400"
    assert page_config(settings, "http://[2001:db8::1]:5001/")["api_url"] == \
        "http://[2001:db8::1]:5400"


def test_the_shell_configuration_names_the_pages_url():
    shell = config.as_shell(config.load({"REGISTRATION_HOST": "0.0.0.0",
                                         "REGISTRATION_PORT": "6001"}))
    assert "WEB_PAGE_URL=http://localhost:6001/" in shell.splitlines()


def test_the_registration_api_serves_the_page(tmp_path):
    settings = config.load(isolated_env(tmp_path))
    app = registration_api.create_app(settings, poll=False) if _takes_poll() else \
        registration_api.create_app(settings)
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "Content-Security-Policy" in page.headers, \
        ("GET / is not served by emojistream.registration.web.add_web_page (another route for "
         "/ comes first)")
    assert client.get("/assets/app.js").status_code == 200
    assert client.get("/config.json").get_json()["emojis"] == list(settings.allowed_emojis)


def _takes_poll() -> bool:
    import inspect
    return "poll" in inspect.signature(registration_api.create_app).parameters


# --- the static files' rules ----------------------------------------------------------------

SCRIPTS = sorted(STATIC_DIR.glob("*.js"))


def test_the_page_has_its_scripts():
    assert {p.name for p in SCRIPTS} >= {"app.js", "viewer.js", "sender.js", "view.js"}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_no_script_inserts_html(path):
    code = path.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in code, f"{path.name} uses {sink}"


@pytest.mark.parametrize("path", sorted(STATIC_DIR.iterdir()), ids=lambda p: p.name)
def test_no_static_file_names_a_host_or_port(path):
    text = path.read_text()
    for pattern in (r"localhost", r"127\.0\.0\.1", r"\b(https?|wss?)://", r":\d{2,5}\b"):
        assert not re.search(pattern, text), f"{path.name} holds {pattern!r}"


# --- CORS of the ingest API -----------------------------------------------------------------

class RecordingSink:
    def __init__(self):
        self.events = []

    def send(self, events, received_at=None):
        self.events.extend(events)

    def problem(self):
        return None

    def close(self, *_args):
        pass


def api_client(**environ):
    sink = RecordingSink()
    app = create_api_app(config.load(environ), sink=sink)
    return app.test_client(), sink


def event(emoji="🔥"):
    return {"user_id": "page-1", "emoji_type": emoji,
            "timestamp": format_timestamp(datetime.now(UTC))}


def preflight(client, path, origin):
    return client.options(path, headers={"Origin": origin,
                                         "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": "content-type"})


PAGE = "http://localhost:5001"  # the registration API's page, with the default settings


@pytest.mark.parametrize("path", ["/emoji", "/emojis"])
def test_by_default_the_registration_apis_page_may_send_and_no_other(path):
    client, sink = api_client()
    answer = preflight(client, path, PAGE)
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == PAGE
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert answer.headers["Access-Control-Allow-Headers"].lower() == "content-type, authorization"
    assert int(answer.headers["Access-Control-Max-Age"]) > 0
    body = event() if path == "/emoji" else [event(), event("😂")]
    sent = client.post(path, json=body, headers={"Origin": "http://127.0.0.1:5001"})
    assert sent.status_code == 200
    assert sent.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:5001"
    assert [e["emoji_type"] for e in sink.events] == (["🔥"] if path == "/emoji"
                                                      else ["🔥", "😂"])
    third_party = client.post(path, json=body, headers={"Origin": "http://stream.example"})
    assert third_party.status_code == 403
    assert third_party.get_json() == {"error": "origin http://stream.example is not allowed "
                                               "(API_CORS_ORIGINS)"}
    assert len(sink.events) == (2 if path == "/emojis" else 1)


@pytest.mark.parametrize("environ, origins", [
    ({}, ("http://localhost:5001", "http://127.0.0.1:5001")),
    ({"REGISTRATION_HOST": "127.0.0.1", "REGISTRATION_PORT": "6001"},
     ("http://localhost:6001", "http://127.0.0.1:6001")),
    ({"REGISTRATION_HOST": "stream.example"}, ("http://stream.example:5001",)),
    ({"REGISTRATION_PUBLIC_URL": "https://Cricket.Example/live/"}, ("https://cricket.example",)),
    ({"API_CORS_ORIGINS": "*"}, ("*",)),
])
def test_the_default_origin_is_the_registration_apis_page(environ, origins):
    settings = config.load(environ)
    assert topology.cors_origins(settings, settings.api_cors_origins) == origins


def test_a_page_on_every_interface_may_send_from_this_machines_names_too():
    settings = config.load({"REGISTRATION_HOST": "0.0.0.0", "REGISTRATION_PORT": "6001"})
    names = dict.fromkeys(["localhost", "127.0.0.1", socket.gethostname().lower(),
                           socket.getfqdn().lower()])
    assert topology.cors_origins(settings, settings.api_cors_origins) == tuple(
        f"http://{name}:6001" for name in names)


# docs/web.md's example for viewers on other machines, as it is written there.
MULTI_MACHINE = {"API_HOST": "0.0.0.0", "REGISTRATION_HOST": "0.0.0.0", "WS_HOST": "0.0.0.0",
                 "WS_PUBLIC_URL_TEMPLATE": "ws://stream.example:{port}/",
                 "REGISTRATION_PUBLIC_URL": "http://stream.example:5001"}


def test_the_multi_machine_example_of_the_docs_takes_reactions_from_its_page():
    doc = (REPO_ROOT / "docs" / "web.md").read_text()
    example = doc.split("For viewers on other machines")[1].split("```")[1]
    assert all(f"{k}={v}" in example or f"{k}='{v}'" in example
               for k, v in MULTI_MACHINE.items()), example
    client, sink = api_client(**MULTI_MACHINE)
    page = "http://stream.example:5001"
    assert preflight(client, "/emoji", page).status_code == 204
    sent = client.post("/emoji", json=event(), headers={"Origin": page})
    assert (sent.status_code, sent.headers["Access-Control-Allow-Origin"]) == (200, page)
    assert len(sink.events) == 1
    # The page it loads is told to register there, and to send to the API by its host name.
    settings = config.load(MULTI_MACHINE)
    assert topology.registration_url(settings) == page


def test_any_origin_may_send_when_configured_with_a_star():
    client, sink = api_client(API_CORS_ORIGINS="*")
    answer = preflight(client, "/emoji", "http://stream.example:5001")
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    sent = client.post("/emoji", json=event(), headers={"Origin": "http://stream.example:5001"})
    assert sent.status_code == 200
    assert sent.headers["Access-Control-Allow-Origin"] == "*"
    assert len(sink.events) == 1


def test_errors_carry_cors_headers_so_the_page_can_read_them():
    client, _sink = api_client()
    answer = client.post("/emoji", json={"user_id": "x"}, headers={"Origin": PAGE})
    assert answer.status_code == 400
    assert answer.headers["Access-Control-Allow-Origin"] == PAGE
    assert "Retry-After" in answer.headers["Access-Control-Expose-Headers"]


def test_a_listed_origin_is_echoed_and_others_are_refused():
    client, sink = api_client(API_CORS_ORIGINS="http://localhost:5001, https://cricket.example/")
    allowed = preflight(client, "/emoji", "https://cricket.example")
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://cricket.example"
    assert "Origin" in allowed.headers["Vary"]
    sent = client.post("/emoji", json=event(), headers={"Origin": "http://localhost:5001"})
    assert sent.status_code == 200
    assert sent.headers["Access-Control-Allow-Origin"] == "http://localhost:5001"

    refused = preflight(client, "/emoji", "http://evil.example")
    assert refused.status_code == 403
    assert "Access-Control-Allow-Origin" not in refused.headers
    posted = client.post("/emoji", json=event(), headers={"Origin": "http://evil.example"})
    assert posted.status_code == 403
    assert posted.get_json() == {"error": "origin http://evil.example is not allowed "
                                          "(API_CORS_ORIGINS)"}
    assert len(sink.events) == 1  # only the allowed origin's


def test_requests_without_an_origin_are_not_concerned():
    client, sink = api_client(API_CORS_ORIGINS="https://cricket.example")
    answer = client.post("/emoji", json=event())
    assert answer.status_code == 200
    assert "Access-Control-Allow-Origin" not in answer.headers
    allow = client.options("/emoji").headers["Allow"]
    assert {method.strip() for method in allow.split(",")} == {"OPTIONS", "POST"}
    assert len(sink.events) == 1
