"""The registration API: assignment of viewers to healthy clusters by load, tokens and their
sessions, every bad input, and the script. A fake health source stands in for the WebSocket
servers here; tests/test_delivery.py runs the real ones."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from emojistream import config
from emojistream.common import tokens
from emojistream.common.streams import StreamCatalog
from emojistream.registration import app as registration_api
from emojistream.registration.app import BALANCER, create_app
from emojistream.registration.balancer import (
    NO_CLUSTER,
    Balancer,
    ClusterHealth,
    HealthMonitor,
)
from tests.services import (
    assert_clean_log,
    free_port,
    run,
    running,
    wait_for_health,
    wait_until,
)

SECRET = "registration-test-secret-32-bytes-or-more"
ADMIN = "registration-test-admin-key-32-bytes-or-more"
ENV = {"CLUSTER_COUNT": "3", "WS_HOST": "localhost", "WS_FIRST_PORT": "5002",
       "WS_PUBLIC_URL_TEMPLATE": "ws://{host}:{port}/", "TOKEN_SECRET": SECRET,
       "SUBSCRIBER_KEY": "registration-test-subscriber-key-32-bytes", "ADMIN_KEY": ADMIN,
       "TOKEN_TTL_S": "3600", "STREAMS": "main,final-2026"}


def app_of(settings, **options):
    """The registration app on the FakeHealth of ``options`` (default: all clusters up), no
    background polls, and a stream catalog that knows STREAMS only (no Kafka here)."""
    options.setdefault("probe", FakeHealth())
    return create_app(settings, poll=False, streams=StreamCatalog(settings), **options)


class FakeHealth:
    """The WebSocket servers' answers: live viewers per cluster, None for a server that is
    down. Counts the polls."""

    def __init__(self, live: dict[int, int | None] | None = None):
        self.live = live if live is not None else {1: 0, 2: 0, 3: 0}
        self.streams: dict[int, dict] = {}  # cluster -> its servers' per-stream report
        self.polls = 0

    def __call__(self, cluster: int) -> ClusterHealth | None:
        self.polls += 1
        live = self.live[cluster]
        return None if live is None else ClusterHealth(live, self.streams.get(cluster, {}))


@pytest.fixture
def settings() -> config.Settings:
    return config.load(ENV)


@pytest.fixture
def health() -> FakeHealth:
    return FakeHealth()


@pytest.fixture
def app(settings, health):
    return app_of(settings, probe=health)


@pytest.fixture
def client(app):
    return app.test_client()


def poll(app) -> None:
    """One round of health polls, as the background threads do every WS_HEALTH_POLL_S."""
    app.extensions[registration_api.MONITOR].poll_all()


def register(client, client_id, **fields):
    return client.post("/register", json={"client_id": client_id, **fields})


def cluster_of(client, client_id) -> str:
    return register(client, client_id).get_json()["cluster_id"]


def deregister(client, client_id):
    return client.post("/deregister", json={"client_id": client_id})


def loads(client) -> dict[str, int]:
    """Each cluster's load as the balancer counts it: live viewers reported plus viewers this
    process assigned since (nothing else is remembered)."""
    balancer = client.application.extensions[BALANCER]
    return {f"cluster{n}": balancer.load(n) for n in balancer.clusters}


def token_of(endpoint: str) -> str:
    return parse_qs(urlsplit(endpoint).query)["token"][0]


def session_of(answer: dict) -> str:
    return tokens.read(SECRET, answer["token"], time.time()).session


# --- assignment -------------------------------------------------------------------------------

def test_register_answers_the_cluster_and_its_endpoint_with_a_token(client):
    before = time.time()
    response = register(client, "client_1")
    assert response.status_code == 200
    answer = response.get_json()
    assert set(answer) == {"status", "cluster_id", "stream_id", "subscriber_endpoint", "token",
                           "session"}
    assert (answer["status"], answer["cluster_id"], answer["stream_id"], answer["session"]) == (
        "success", "cluster1", "main", "new")
    endpoint = answer["subscriber_endpoint"]
    assert endpoint.startswith("ws://localhost:5002/?token=")
    token = token_of(endpoint)
    assert token == answer["token"]
    admission = tokens.verify(SECRET, token, 1, time.time())
    assert admission.client_id == "client_1" and len(admission.session) == 22
    # Valid for TOKEN_TTL_S, and for cluster 1 only.
    with pytest.raises(tokens.TokenError, match="token expired"):
        tokens.verify(SECRET, token, 1, before + 3601)
    with pytest.raises(tokens.TokenError, match="token is for cluster 1, this is cluster 2"):
        tokens.verify(SECRET, token, 2, time.time())


def test_nine_viewers_spread_round_robin_over_three_clusters(client):
    assigned = [cluster_of(client, f"viewer-{i}") for i in range(9)]
    assert assigned == ["cluster1", "cluster2", "cluster3"] * 3
    assert loads(client) == {"cluster1": 3, "cluster2": 3, "cluster3": 3}


def test_endpoints_follow_the_cluster(client):
    endpoints = [register(client, f"v{i}").get_json()["subscriber_endpoint"] for i in range(3)]
    assert [e.split("?")[0] for e in endpoints] == [
        "ws://localhost:5002/", "ws://localhost:5003/", "ws://localhost:5004/"]
    assert [tokens.verify(SECRET, token_of(e), n, time.time()).client_id
            for n, e in enumerate(endpoints, start=1)] == ["v0", "v1", "v2"]


def test_each_registration_without_a_token_is_a_new_session(client):
    sessions = {session_of(register(client, "same").get_json()) for _ in range(5)}
    assert len(sessions) == 5


def test_the_load_is_the_live_count_plus_the_viewers_assigned_since(app, client, health):
    health.live = {1: 5, 2: 0, 3: 2}
    poll(app)
    # loads 5, 0, 2 -> cluster2 until it reaches 2, then cluster2 and cluster3 alternate
    assert [cluster_of(client, f"a{i}") for i in range(6)] == [
        "cluster2", "cluster2", "cluster3", "cluster2", "cluster3", "cluster2"]
    # Those 6 connected (5+0+2 became 5+4+4): the next poll replaces the estimate.
    health.live = {1: 5, 2: 4, 3: 4}
    poll(app)
    assert [cluster_of(client, f"b{i}") for i in range(3)] == ["cluster3", "cluster2",
                                                              "cluster3"]


def test_a_burst_of_registrations_before_anyone_connects_is_spread_evenly(app, client):
    assigned = []
    for i in range(30):
        assigned.append(cluster_of(client, f"v{i}"))
        if i in (7, 16, 22):
            poll(app)  # nobody has connected yet: live counts are still 0
    assert {c: assigned.count(c) for c in set(assigned)} == {
        "cluster1": 10, "cluster2": 10, "cluster3": 10}


def test_a_cluster_whose_server_is_down_is_not_assigned(app, client, health):
    health.live[2] = None
    poll(app)
    assert [cluster_of(client, f"v{i}") for i in range(6)] == ["cluster1", "cluster3"] * 3
    health.live = {1: 3, 2: 0, 3: 3}
    poll(app)  # back up: assignable again, and the least loaded
    assert [cluster_of(client, f"w{i}") for i in range(3)] == ["cluster2"] * 3


def register_again(client, answer: dict, client_id: str, **fields):
    """Register again presenting the previous answer's token, as the page and the simulator do."""
    return register(client, client_id, token=answer["token"], **fields)


def test_registering_again_with_the_token_keeps_the_cluster_and_session(client):
    first = register(client, "again").get_json()
    register(client, "other")
    second = register_again(client, first, "again")
    assert second.status_code == 200
    answer = second.get_json()
    assert (answer["cluster_id"], answer["session"]) == (first["cluster_id"], "resumed")
    assert answer["cluster_id"] == "cluster1"
    assert tokens.verify(SECRET, answer["token"], 1, time.time()) == (
        "again", "main", session_of(first))
    # Kept: not counted again on cluster1.
    assert loads(client) == {"cluster1": 1, "cluster2": 1, "cluster3": 0}


def test_without_its_token_a_client_id_is_a_new_session_balanced_anew(client):
    """Registering the same client id without the token (a second party, or an unmodified
    client) gets another session: it can never take the first one's place."""
    first = register(client, "again").get_json()
    second = register(client, "again").get_json()
    assert (second["cluster_id"], second["session"]) == ("cluster2", "new")
    assert session_of(second) != session_of(first)


@pytest.mark.parametrize("whose", ["another client's", "forged", "expired", "garbage"])
def test_a_token_that_is_not_the_clients_own_valid_one_gets_a_new_session(client, whose):
    victim = register(client, "victim-1").get_json()
    presented = {
        "another client's": register(client, "someone").get_json()["token"],
        "forged": tokens.issue("not-the-secret", "victim-1", 1, 60, time.time(),
                               session=session_of(victim)),
        "expired": tokens.issue(SECRET, "victim-1", 1, -1, time.time(),
                                session=session_of(victim)),
        "garbage": "x.y",
    }[whose]
    answer = register(client, "victim-1", token=presented)
    assert answer.status_code == 200
    assert answer.get_json()["session"] == "new"
    assert session_of(answer.get_json()) not in (session_of(victim), None)


def test_a_token_that_is_not_a_string_is_a_400(client):
    answer = register(client, "x", token=7)
    assert (answer.status_code, answer.get_json()) == (400, {
        "error": "token must be a string (the one the previous /register answered), got number"})


def test_another_process_with_the_same_secret_resumes_the_session(settings):
    """Nothing is remembered: a token issued by one registration process (or before a
    restart) is resumed by any other."""
    first = register(app_of(settings).test_client(), "roamer").get_json()
    other = app_of(settings).test_client()
    answer = register_again(other, first, "roamer").get_json()
    assert (answer["cluster_id"], answer["session"]) == (first["cluster_id"], "resumed")
    assert session_of(answer) == session_of(first)


def test_registering_again_while_the_cluster_is_down_moves_the_client(app, client, health):
    first = register(client, "mover").get_json()
    assert first["cluster_id"] == "cluster1"
    health.live[1] = None
    poll(app)
    answer = register_again(client, first, "mover").get_json()
    assert (answer["cluster_id"], answer["session"]) == ("cluster2", "resumed")
    assert tokens.verify(SECRET, token_of(answer["subscriber_endpoint"]), 2,
                         time.time()) == ("mover", "main", session_of(first))
    assert loads(client) == {"cluster1": 0, "cluster2": 1, "cluster3": 0}


def test_registering_again_rechecks_the_cluster_at_once(app, client, health, monkeypatch):
    """A viewer registers again when its connection dropped: its server is polled then and
    there (not only every WS_HEALTH_POLL_S)."""
    monkeypatch.setattr("emojistream.registration.balancer.RECHECK_S", 0.0)
    first = register(client, "dropped").get_json()
    assert first["cluster_id"] == "cluster1"
    health.live[1] = None  # died; the background poll has not noticed yet
    polls = health.polls
    assert register_again(client, first, "dropped").get_json()["cluster_id"] == "cluster2"
    assert health.polls == polls + 1
    assert client.get("/clusters").get_json()[0]["healthy"] is False


def test_a_recheck_is_skipped_when_the_cluster_was_just_polled(app, client, health):
    first = register(client, "x").get_json()
    assert first["cluster_id"] == "cluster1"
    polls = health.polls
    # polled at start, less than RECHECK_S ago
    assert register_again(client, first, "x").get_json()["cluster_id"] == "cluster1"
    assert health.polls == polls


def test_no_healthy_cluster_is_a_503(app, client, health):
    known = register(client, "known").get_json()
    health.live = {1: None, 2: None, 3: None}
    poll(app)
    for response in (register(client, "new"), register_again(client, known, "known")):
        assert response.status_code == 503
        assert response.get_json() == {"error": NO_CLUSTER}
        assert response.get_json()["error"].startswith("no cluster is available")
        assert response.headers["Retry-After"] == "1"
    assert loads(client) == {"cluster1": 0, "cluster2": 0, "cluster3": 0}


def test_the_client_id_may_be_anything_printable(client):
    client_id = "ana maría/ü?&=#🔥"
    endpoint = register(client, client_id).get_json()["subscriber_endpoint"]
    assert tokens.verify(SECRET, token_of(endpoint), 1, time.time()).client_id == client_id
    assert "client_id" not in endpoint and "ana" not in endpoint


def test_a_public_url_template_with_a_query_gets_the_token_appended():
    settings = config.load(dict(ENV, WS_PUBLIC_URL_TEMPLATE="wss://{host}/ws?port={port}"))
    app = app_of(settings, probe=FakeHealth())
    endpoint = register(app.test_client(), "x").get_json()["subscriber_endpoint"]
    assert endpoint.startswith("wss://localhost/ws?port=5002&token=")


def test_concurrent_registrations_are_spread_evenly(settings):
    balancer = Balancer(settings.clusters)
    for n in settings.clusters:
        balancer.report(n, ClusterHealth(0), time.monotonic())
    threads = [threading.Thread(target=lambda: [balancer.assign() for _ in range(100)])
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [balancer.load(n) for n in settings.clusters] == [200, 200, 200]


def test_a_report_replaces_the_viewers_assigned_before_its_poll_started(settings):
    now = [100.0]
    balancer = Balancer(settings.clusters, clock=lambda: now[0])
    balancer.report_all({n: ClusterHealth(0) for n in settings.clusters}, 99.0)
    assert [balancer.assign() for _ in range(4)] == [1, 2, 3, 1]
    now[0] = 101.0
    assert balancer.assign() == 2
    balancer.report_all({1: ClusterHealth(2), 2: ClusterHealth(1), 3: ClusterHealth(1)}, 100.5)
    assert [balancer.load(n) for n in settings.clusters] == [2, 2, 1]  # 2 still pending
    assert (balancer.live_total(), balancer.healthy_count()) == (4, 3)


def test_a_late_answer_to_an_older_poll_does_not_replace_a_newer_report(settings):
    balancer = Balancer(settings.clusters)
    balancer.report(1, ClusterHealth(7), requested_at=10.0)
    balancer.report(1, ClusterHealth(3), requested_at=9.0)
    assert balancer.live_count(1) == 7


def test_the_monitor_polls_in_the_background_and_stops(settings):
    balancer = Balancer(settings.clusters)
    health = FakeHealth({1: 0, 2: 4, 3: None})
    monitor = HealthMonitor(balancer, health, interval_s=0.05)
    monitor.start()
    try:
        deadline = time.monotonic() + 10
        while health.polls < 12:
            assert time.monotonic() < deadline, "the monitor did not poll"
            time.sleep(0.01)
    finally:
        monitor.stop()
    assert [balancer.is_healthy(n) for n in settings.clusters] == [True, True, False]
    assert [balancer.live_count(n) for n in settings.clusters] == [0, 4, None]
    polls = health.polls
    time.sleep(0.2)
    assert health.polls == polls  # stopped


def test_a_failing_probe_marks_the_cluster_down(settings):
    def broken(cluster):
        raise RuntimeError("probe bug")

    balancer = Balancer(settings.clusters)
    balancer.report(1, ClusterHealth(0), time.monotonic())
    HealthMonitor(balancer, broken, interval_s=1).poll_all()
    assert not balancer.is_healthy(1)


# --- deregistration ---------------------------------------------------------------------------

def test_deregister_is_a_no_op_that_answers_200(client):
    """Kept for older clients: nothing is remembered, so there is nothing to forget."""
    first = register(client, "leaver").get_json()
    for client_id in ("leaver", "leaver", "nobody"):
        response = deregister(client, client_id)
        assert (response.status_code, response.get_json()) == (200, {"status": "success"})
    again = register_again(client, first, "leaver").get_json()
    assert (again["cluster_id"], again["session"]) == (first["cluster_id"], "resumed")


# --- bad input --------------------------------------------------------------------------------

BAD_BODIES = [
    (b"", "body is not valid JSON"),
    (b"{", "body is not valid JSON"),
    (b'{"client_id": NaN}', "body is not valid JSON"),
    (b"\xff\xfe", "body is not valid JSON"),
    (b'"client_1"', 'body must be a JSON object like {"client_id": "..."}'),
    (b'["client_1"]', 'body must be a JSON object like {"client_id": "..."}'),
    (b"null", 'body must be a JSON object like {"client_id": "..."}'),
    (b"{}", "missing field: client_id"),
    (b'{"user_id": "client_1"}', "missing field: client_id"),
    (b'{"client_id": null}', "client_id must be a string, got null"),
    (b'{"client_id": 7}', "client_id must be a string, got number"),
    (b'{"client_id": true}', "client_id must be a string, got boolean"),
    (b'{"client_id": ["a"]}', "client_id must be a string, got array"),
    (b'{"client_id": {"a": 1}}', "client_id must be a string, got object"),
    (b'{"client_id": ""}', "client_id must not be empty"),
    (b'{"client_id": "   "}', "client_id must not be empty"),
    (json.dumps({"client_id": "x" * 65}).encode(), "client_id is longer than 64 characters"),
    (b'{"client_id": "a\\u0000b"}', "client_id must not contain control characters"),
    (b'{"client_id": "a\\nb"}', "client_id must not contain control characters"),
    (b'{"client_id": "a\\u200bb"}', "client_id must not contain control characters"),
    (b'{"client_id": "a\\u202eb"}', "client_id must not contain control characters"),
    (b'{"client_id": "\\ud800"}', "client_id must not contain control characters"),
]


@pytest.mark.parametrize("path", ["/register", "/deregister"])
@pytest.mark.parametrize("body, message", BAD_BODIES)
def test_bad_input_is_a_400_naming_the_problem(client, path, body, message):
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json() == {"error": message}
    assert loads(client) == {"cluster1": 0, "cluster2": 0, "cluster3": 0}


def test_64_characters_are_allowed(client):
    assert register(client, "x" * 64).status_code == 200


def test_the_content_type_does_not_matter(client):
    response = client.post("/register", data=b'{"client_id": "plain"}', content_type="text/plain")
    assert response.status_code == 200
    assert response.get_json()["cluster_id"] == "cluster1"


def test_an_unknown_path_is_a_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.get_json() == {"error": "no such endpoint: /nope (there are POST /register, "
                                             "POST /deregister, GET /clusters, GET /streams, "
                                             "POST /streams, DELETE /streams/ID, "
                                             "GET /streams/ID/windows, GET /streams/ID/moments, "
                                             "GET /health, GET /metrics and GET /openapi.json)"}


@pytest.mark.parametrize("method, path, allowed", [
    ("get", "/register", "OPTIONS, POST"),
    ("put", "/deregister", "OPTIONS, POST"),
    ("post", "/clusters", "GET, HEAD, OPTIONS"),
    ("delete", "/health", "GET, HEAD, OPTIONS"),
])
def test_a_wrong_method_is_a_json_405_with_allow(client, method, path, allowed):
    response = getattr(client, method)(path)
    assert response.status_code == 405
    assert response.get_json() == {"error": f"{method.upper()} is not allowed on {path}; "
                                            f"use {allowed}"}
    assert response.headers["Allow"] == allowed


def test_an_internal_error_is_a_json_500_without_details(settings):
    class Broken(Balancer):
        def assign(self, keep=None):
            raise RuntimeError("secret detail")

    app = app_of(settings, balancer=Broken(settings.clusters))
    response = app.test_client().post("/register", json={"client_id": "x"})
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error"}


# --- clusters and health ----------------------------------------------------------------------

def test_clusters_lists_each_cluster_with_its_health_and_viewers(app, client, health):
    health.live = {1: 4, 2: 0, 3: None}
    poll(app)
    register(client, "a")
    register(client, "b")
    response = client.get("/clusters")
    assert response.status_code == 200
    assert response.get_json() == [
        {"cluster_id": "cluster1", "endpoint": "ws://localhost:5002/", "healthy": True,
         "live_connections": 4},
        {"cluster_id": "cluster2", "endpoint": "ws://localhost:5003/", "healthy": True,
         "live_connections": 0},
        {"cluster_id": "cluster3", "endpoint": "ws://localhost:5004/", "healthy": False,
         "live_connections": None},
    ]


def test_health_counts_the_servers_live_viewers(app, client, health):
    register(client, "a")  # registered, not connected: no viewer yet
    assert (client.get("/health").status_code, client.get("/health").get_json()) == (
        200, {"status": "ok", "live_viewers": 0, "healthy_clusters": 3})
    health.live = {1: 4, 2: 5, 3: None}
    poll(app)
    assert client.get("/health").get_json() == {"status": "ok", "live_viewers": 9,
                                                 "healthy_clusters": 2}


# --- the script -------------------------------------------------------------------------------

# --- streams ------------------------------------------------------------------------------------

def test_a_viewer_registers_for_a_stream_and_registering_again_switches_it(client):
    first = register(client, "fan", stream_id="final-2026").get_json()
    assert first["stream_id"] == "final-2026"
    assert tokens.verify(SECRET, token_of(first["subscriber_endpoint"]), 1,
                         time.time()) == ("fan", "final-2026", session_of(first))
    switched = register_again(client, first, "fan", stream_id="main").get_json()
    assert (switched["cluster_id"], switched["stream_id"], switched["session"]) == (
        "cluster1", "main", "resumed")
    assert tokens.verify(SECRET, token_of(switched["subscriber_endpoint"]), 1,
                         time.time()) == ("fan", "main", session_of(first))


@pytest.mark.parametrize("stream_id, status, message", [
    ("semi-final", 404, "unknown stream_id 'semi-final': GET /streams on the registration API "
                        "lists the live streams"),
    ("no spaces", 400, "stream_id must be 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and "
                       "'-', got \"no spaces\""),
    (7, 400, "stream_id must be 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', "
             "got 7"),
])
def test_an_unknown_or_malformed_stream_is_refused(client, stream_id, status, message):
    answer = register(client, "fan", stream_id=stream_id)
    assert (answer.status_code, answer.get_json()) == (status, {"error": message})
    assert loads(client) == {"cluster1": 0, "cluster2": 0, "cluster3": 0}


def test_streams_lists_each_stream_with_its_viewers_and_last_window(app, client, health):
    health.streams = {
        1: {"main": {"viewers": 4, "last_window": "2026-11-27T07:00:02.000Z",
                     "last_window_total": 40}},
        2: {"main": {"viewers": 3, "last_window": "2026-11-27T07:00:00.000Z",
                     "last_window_total": 11},
            "final-2026": {"viewers": 2, "last_window": None, "last_window_total": 0}},
        3: {"main": {"viewers": 1, "last_window": "2026-11-27T07:00:02.000Z",
                     "last_window_total": 40}}}
    health.live[3] = None  # down: its report no longer counts
    poll(app)
    assert client.get("/streams").get_json() == [
        {"stream_id": "final-2026", "viewers": 2, "last_window": None, "last_window_total": 0},
        {"stream_id": "main", "viewers": 7, "last_window": "2026-11-27T07:00:02.000Z",
         "last_window_total": 40}]


@pytest.mark.parametrize("method, path, body", [("post", "/streams", {"stream_id": "x"}),
                                                ("delete", "/streams/final-2026", None)])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", f"Basic {ADMIN}", ADMIN])
def test_adding_and_removing_streams_takes_the_admin_key(client, method, path, body,
                                                         authorization):
    headers = {"Authorization": authorization} if authorization else {}
    answer = getattr(client, method)(path, json=body, headers=headers)
    assert answer.status_code == 401
    assert answer.get_json() == {"error": "missing or wrong admin key (send Authorization: "
                                          "Bearer <key>; the key is ADMIN_KEY, or "
                                          "VAR_DIR/secrets/admin.key)"}
    assert client.get("/streams").get_json()[0]["stream_id"] == "final-2026"


def test_a_stream_of_streams_cannot_be_removed_nor_added_twice(client):
    admin = {"Authorization": f"Bearer {ADMIN}"}
    removed = client.delete("/streams/main", headers=admin)
    assert (removed.status_code, removed.get_json()) == (409, {
        "error": "stream 'main' is one of STREAMS: change the setting to remove it"})
    again = client.post("/streams", json={"stream_id": "final-2026"}, headers=admin)
    assert (again.status_code, again.get_json()) == (409, {
        "error": "stream 'final-2026' exists already"})
    unknown = client.delete("/streams/nowhere", headers=admin)
    assert (unknown.status_code, unknown.get_json()) == (404, {
        "error": "unknown stream_id 'nowhere': GET /streams on the registration API lists the "
                 "live streams"})
    bad = client.post("/streams", json={"stream_id": "a b"}, headers=admin)
    assert bad.status_code == 400 and "stream_id must be" in bad.get_json()["error"]


def test_no_stream_is_added_beyond_streams_max(settings):
    client = app_of(dataclasses.replace(settings, streams_max=2)).test_client()
    admin = {"Authorization": f"Bearer {ADMIN}"}
    answer = client.post("/streams", json={"stream_id": "one-more"}, headers=admin)
    assert (answer.status_code, answer.get_json()) == (409, {
        "error": "there are 2 streams already, at most STREAMS_MAX=2: remove one (DELETE "
                 "/streams/ID) or raise STREAMS_MAX"})
    assert [s["stream_id"] for s in client.get("/streams").get_json()] == ["final-2026", "main"]
    assert config.load({}).streams_max == 100


def test_refused_registrations_and_admin_keys_are_logged_as_counts(settings, caplog):
    caplog.set_level(logging.INFO, logger="registration_api")
    app = app_of(dataclasses.replace(settings, registration_burst_per_address=2,
                                     registration_rate_per_address=0.001))
    client = app.test_client()
    statuses = [register(client, f"v{i}").status_code for i in range(7)]
    assert statuses == [200, 200, 429, 429, 429, 429, 429]
    for _ in range(3):
        assert client.post("/streams", json={"stream_id": "x"},
                           headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert not [r for r in caplog.records if "refused" in r.getMessage()]  # one line per interval
    app.extensions[registration_api.REFUSALS].flush()
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1
    assert refused[0].startswith("refused 8 client(s) in the last ")
    assert refused[0].endswith(" s: rate limited (429) 5, bad admin key (401) 3")


# --- limits -------------------------------------------------------------------------------------

def test_a_body_over_the_limit_is_a_413(client):
    answer = client.post("/register", data=b'{"client_id": "' + b"x" * 5000 + b'"}')
    assert (answer.status_code, answer.get_json()) == (413, {
        "error": "body is larger than 4096 bytes"})


def test_registrations_per_address_are_rate_limited(settings, health):
    limited = dataclasses.replace(settings, registration_burst_per_address=3,
                                  registration_rate_per_address=0.5)
    client = app_of(limited, probe=health).test_client()
    assert [register(client, f"r{i}").status_code for i in range(3)] == [200, 200, 200]
    refused = register(client, "r3")
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "2"
    assert refused.get_json() == {
        "error": "too many registrations from 127.0.0.1: at most 3 at once and 0.5 a second "
                 "(REGISTRATION_BURST_PER_ADDRESS, REGISTRATION_RATE_PER_ADDRESS)"}
    assert deregister(client, "r0").status_code == 429  # deregistering (a no-op) counts too
    other = client.post("/register", json={"client_id": "r4"},
                        environ_base={"REMOTE_ADDR": "192.0.2.9"})
    assert other.status_code == 200  # another address has a bucket of its own
    assert client.get("/clusters").status_code == 200  # reading is not limited


def raw_request(port: int, head: bytes, body_part: bytes, timeout_s: float = 5) -> bytes:
    """Send a request head and the start of its body, and read the answer without sending the
    rest: a server that reads the whole body first never answers."""
    with socket.create_connection(("localhost", port), timeout=timeout_s) as sock:
        sock.sendall(head + body_part)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < int(
                answer.lower().partition(b"content-length: ")[2].split(b"\r\n")[0] or 0):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_the_script_answers_a_20_mb_body_with_413_without_reading_it(test_env, tmp_path):
    port = free_port()
    with running(tmp_path, "registration_api", "registration_api.py", "--port", str(port),
                 env=test_env) as service:
        wait_for_health(f"http://localhost:{port}/health", service)
        answer = raw_request(port, b"POST /register HTTP/1.1\r\nHost: x\r\n"
                                   b"Content-Type: application/json\r\n"
                                   b"Content-Length: 20000000\r\n\r\n", b'{"client_id": "')
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 ")
        assert json.loads(body) == {"error": "body is larger than 4096 bytes"}
        assert service.stop() == 0


def test_help_exits_0():
    result = run("registration_api.py", "--help", env=dict(os.environ))
    assert result.returncode == 0
    assert "--port" in result.stdout and "--threads" in result.stdout


def test_script_serves_with_two_workers_by_default_and_stops_on_sigterm(test_env, tmp_path):
    """No WebSocket server runs on ports 7001-7002: both clusters are down, registration is a
    503 (tests/test_delivery.py runs the script with real WebSocket servers)."""
    port = free_port()
    env = dict(test_env, CLUSTER_COUNT="2", WS_FIRST_PORT="7001", WS_HEALTH_POLL_S="0.2")
    with running(tmp_path, "registration_api", "registration_api.py", "--port", str(port),
                 env=env) as service:
        base = f"http://localhost:{port}"
        assert wait_for_health(f"{base}/health", service) == {
            "status": "ok", "live_viewers": 0, "healthy_clusters": 0}
        answer = requests.post(f"{base}/register", json={"client_id": "c0"}, timeout=5)
        assert (answer.status_code, answer.json()) == (503, {"error": NO_CLUSTER})
        bad = requests.post(f"{base}/register", data=b"{", timeout=5)
        assert (bad.status_code, bad.json()) == (400, {"error": "body is not valid JSON"})
        assert requests.get(f"{base}/clusters", timeout=5).json() == [
            {"cluster_id": "cluster1", "endpoint": "ws://localhost:7001/", "healthy": False,
             "live_connections": None},
            {"cluster_id": "cluster2", "endpoint": "ws://localhost:7002/", "healthy": False,
             "live_connections": None},
        ]
        time.sleep(0.5)  # a few background polls
        assert service.stop() == 0
    log = service.log()
    assert_clean_log(log)
    assert log.count("_granian: Spawning worker-") == 2
    assert "(2 worker(s) with 4 threads)" in log
    # Down is logged once per cluster by each worker (each polls), not at every poll.
    assert log.count("WARNING registration_api: cluster1 is down") == 2
    assert log.count("WARNING registration_api: cluster2 is down") == 2


def test_a_killed_main_process_takes_its_workers_with_it(test_env, tmp_path):
    """granian's workers would go on answering on the port after their main process died."""
    port = free_port()
    with running(tmp_path, "registration_api", "registration_api.py", "--port", str(port),
                 env=test_env) as service:
        wait_for_health(f"http://localhost:{port}/health", service)
        wait_until(lambda: service.log().count("Spawning worker-") == 2, timeout_s=20)
        workers = [int(service.log().split(f"Spawning worker-{n} with PID: ")[1].split()[0])
                   for n in (1, 2)]
        try:
            service.kill()  # SIGKILL: the main process gets no chance to stop its workers
            # Each stops within PARENT_CHECK_S + ORPHAN_GRACE_S (11 s), on a busy machine later.
            wait_until(lambda: not any(process_runs(w, "registration_api.py") for w in workers),
                       timeout_s=45, message="a worker outlived its main process")
        finally:
            for worker in workers:
                if process_runs(worker, "registration_api.py"):
                    os.kill(worker, signal.SIGKILL)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://localhost:{port}/health", timeout=2)
    log = service.log()
    for worker in workers:
        assert f"WARNING emojistream.common.wsgi: the server's main process {service.pid} is " \
               f"gone; stopping worker {worker}" in log


def process_runs(pid: int, script: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process running ``script``."""
    try:
        with open(f"/proc/{pid}/stat") as stat, open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            state = stat.read().rsplit(")", 1)[1].split()[0]
            return state != "Z" and script.encode() in cmdline.read()
    except FileNotFoundError:
        return False


def test_script_stops_on_sigint_too(test_env, tmp_path):
    port = free_port()
    with running(tmp_path, "registration_api", "registration_api.py", "--port", str(port),
                 env=test_env) as service:
        wait_for_health(f"http://localhost:{port}/health", service)
        service.process.send_signal(signal.SIGINT)
        assert service.process.wait(timeout=30) == 0


def test_a_taken_port_is_a_one_line_error(test_env, tmp_path):
    port = free_port()
    with running(tmp_path, "first", "registration_api.py", "--port", str(port),
                 env=test_env) as first:
        wait_for_health(f"http://localhost:{port}/health", first)
        result = run("registration_api.py", "--port", str(port), env=test_env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(f"ERROR   registration_api: port {port} on localhost is already "
                             "in use")
