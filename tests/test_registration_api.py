"""The registration API: assignment of viewers to clusters, every bad input, and the script."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
import requests

from emojistream import config
from registration_api import Registry, create_app
from tests.conftest import free_port
from tests.services import assert_clean_log, run, running, wait_for_health

ENV = {"CLUSTER_COUNT": "3", "WS_HOST": "localhost", "WS_BASE_PORT": "5001",
       "WS_PUBLIC_URL_TEMPLATE": "ws://{host}:{port}/"}


@pytest.fixture
def settings() -> config.Settings:
    return config.load(ENV)


@pytest.fixture
def client(settings):
    return create_app(settings).test_client()


def register(client, client_id):
    return client.post("/register", json={"client_id": client_id})


def deregister(client, client_id):
    return client.post("/deregister", json={"client_id": client_id})


def clusters(client) -> dict[str, int]:
    return {c["cluster_id"]: c["registered_viewers"] for c in client.get("/clusters").get_json()}


# --- assignment -------------------------------------------------------------------------------

def test_register_answers_the_cluster_and_its_endpoint(client):
    response = register(client, "client_1")
    assert response.status_code == 200
    assert response.get_json() == {"status": "success", "cluster_id": "cluster1",
                                   "subscriber_endpoint": "ws://localhost:5002/?client_id=client_1"}


def test_nine_viewers_spread_round_robin_over_three_clusters(client):
    assigned = [register(client, f"viewer-{i}").get_json()["cluster_id"] for i in range(9)]
    assert assigned == ["cluster1", "cluster2", "cluster3"] * 3
    assert clusters(client) == {"cluster1": 3, "cluster2": 3, "cluster3": 3}


def test_endpoints_follow_the_cluster(client):
    endpoints = [register(client, f"v{i}").get_json()["subscriber_endpoint"] for i in range(3)]
    assert endpoints == ["ws://localhost:5002/?client_id=v0", "ws://localhost:5003/?client_id=v1",
                         "ws://localhost:5004/?client_id=v2"]


def test_a_new_viewer_goes_to_the_cluster_with_fewest_viewers(client):
    for i in range(6):
        register(client, f"v{i}")  # v0, v3 on cluster1; v1, v4 on cluster2; v2, v5 on cluster3
    assert deregister(client, "v1").status_code == 200
    assert deregister(client, "v4").status_code == 200
    assert register(client, "new-1").get_json()["cluster_id"] == "cluster2"
    assert register(client, "new-2").get_json()["cluster_id"] == "cluster2"
    # A tie again: round-robin goes on after the cluster chosen last.
    assert register(client, "new-3").get_json()["cluster_id"] == "cluster3"
    assert clusters(client) == {"cluster1": 2, "cluster2": 2, "cluster3": 3}


def test_registering_again_returns_the_existing_assignment(client):
    first = register(client, "again").get_json()
    register(client, "other")
    second = register(client, "again")
    assert second.status_code == 200
    assert second.get_json() == first
    assert clusters(client) == {"cluster1": 1, "cluster2": 1, "cluster3": 0}


def test_the_client_id_is_url_encoded_in_the_endpoint(client):
    answer = register(client, "ana maría/ü?&=#🔥").get_json()
    assert answer["subscriber_endpoint"] == (
        "ws://localhost:5002/?client_id=ana%20mar%C3%ADa%2F%C3%BC%3F%26%3D%23%F0%9F%94%A5")


def test_a_public_url_template_with_a_query_gets_the_client_id_appended():
    settings = config.load(dict(ENV, WS_PUBLIC_URL_TEMPLATE="wss://{host}/ws?port={port}"))
    answer = register(create_app(settings).test_client(), "x").get_json()
    assert answer["subscriber_endpoint"] == "wss://localhost/ws?port=5002&client_id=x"


def test_the_load_measure_is_pluggable(settings):
    live = {1: 5, 2: 0, 3: 2}
    registry = Registry(settings.clusters, load=live.__getitem__)
    client = create_app(settings, registry=registry).test_client()
    assert register(client, "a").get_json()["cluster_id"] == "cluster2"
    live[2] = 9
    assert register(client, "b").get_json()["cluster_id"] == "cluster3"


def test_concurrent_registrations_are_spread_evenly(settings):
    registry = Registry(settings.clusters)
    threads = [threading.Thread(target=lambda i=i: [registry.register(f"t{i}-{j}")
                                                    for j in range(100)]) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [registry.registered_count(n) for n in settings.clusters] == [200, 200, 200]
    assert registry.total() == 600


# --- deregistration ---------------------------------------------------------------------------

def test_deregister_then_deregister_again_is_404(client):
    register(client, "leaver")
    first = deregister(client, "leaver")
    assert (first.status_code, first.get_json()) == (200, {"status": "success"})
    second = deregister(client, "leaver")
    assert (second.status_code, second.get_json()) == (
        404, {"error": "client_id 'leaver' is not registered"})
    assert clusters(client) == {"cluster1": 0, "cluster2": 0, "cluster3": 0}


def test_deregistering_an_unknown_client_is_404(client):
    response = deregister(client, "nobody")
    assert (response.status_code, response.get_json()) == (
        404, {"error": "client_id 'nobody' is not registered"})


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
    assert clusters(client) == {"cluster1": 0, "cluster2": 0, "cluster3": 0}


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
                                             "POST /deregister, GET /clusters and GET /health)"}


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
    def broken(_cluster):
        raise RuntimeError("secret detail")

    app = create_app(settings, registry=Registry(settings.clusters, load=broken))
    response = app.test_client().post("/register", json={"client_id": "x"})
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error"}


# --- clusters and health ----------------------------------------------------------------------

def test_clusters_lists_each_cluster_with_its_endpoint_and_viewers(client):
    register(client, "a")
    register(client, "b")
    response = client.get("/clusters")
    assert response.status_code == 200
    assert response.get_json() == [
        {"cluster_id": "cluster1", "endpoint": "ws://localhost:5002/", "registered_viewers": 1},
        {"cluster_id": "cluster2", "endpoint": "ws://localhost:5003/", "registered_viewers": 1},
        {"cluster_id": "cluster3", "endpoint": "ws://localhost:5004/", "registered_viewers": 0},
    ]


def test_health(client):
    register(client, "a")
    response = client.get("/health")
    assert (response.status_code, response.get_json()) == (
        200, {"status": "ok", "registered_viewers": 1})


# --- the script -------------------------------------------------------------------------------

def test_help_exits_0():
    result = run("registration_api.py", "--help", env=dict(os.environ))
    assert result.returncode == 0
    assert "--port" in result.stdout and "--threads" in result.stdout


def test_script_serves_with_one_gunicorn_worker_and_stops_on_sigterm(test_env, tmp_path):
    port = free_port()
    env = dict(test_env, CLUSTER_COUNT="2", WS_BASE_PORT="7000")
    with running(tmp_path, "registration_api", "registration_api.py", "--port", str(port),
                 env=env) as service:
        base = f"http://localhost:{port}"
        assert wait_for_health(f"{base}/health", service) == {"status": "ok",
                                                              "registered_viewers": 0}
        answers = [requests.post(f"{base}/register", json={"client_id": f"c{i}"}, timeout=5)
                   for i in range(4)]
        assert [a.json()["cluster_id"] for a in answers] == ["cluster1", "cluster2"] * 2
        assert answers[0].json()["subscriber_endpoint"] == "ws://localhost:7001/?client_id=c0"
        bad = requests.post(f"{base}/register", data=b"{", timeout=5)
        assert (bad.status_code, bad.json()) == (400, {"error": "body is not valid JSON"})
        assert requests.get(f"{base}/clusters", timeout=5).json() == [
            {"cluster_id": "cluster1", "endpoint": "ws://localhost:7001/", "registered_viewers": 2},
            {"cluster_id": "cluster2", "endpoint": "ws://localhost:7002/", "registered_viewers": 2},
        ]
        assert service.stop() == 0
    log = service.log()
    assert_clean_log(log)
    assert log.count("gunicorn.error: Booting worker with pid") == 1
    assert "INFO    registration_api: registered 'c3' on cluster2" in log


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
