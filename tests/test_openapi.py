"""The HTTP APIs against their OpenAPI documents (emojistream/ingest/openapi.json,
emojistream/registration/openapi.json), fuzzed by schemathesis: emoji_api.py, registration_api.py
and one WebSocket server run as processes on the test run's Kafka. Every operation gets schema-
valid and schema-violating requests; every answer must be no 5xx, have a documented status,
content type, headers and body (every error a JSON {"error": ...})."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from emojistream import config
from emojistream.common import secrets, tokens
from tests.services import free_port, run_script, running, wait_for_health

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = {"ingest": REPO / "emojistream" / "ingest" / "openapi.json",
             "registration": REPO / "emojistream" / "registration" / "openapi.json"}
EXAMPLES_PER_OPERATION = 40  # of each mode: schema-valid and schema-violating
RUN_LIMIT_S = 60


@pytest.fixture(scope="module")
def apis(kafka, test_env, tmp_path_factory):
    """The base URLs of the live APIs, and the admin key."""
    log_dir = tmp_path_factory.mktemp("openapi-logs")
    env = dict(test_env, API_PORT=str(free_port()), REGISTRATION_PORT=str(free_port()),
               API_WORKERS="1", CLUSTER_COUNT="1", WS_HEALTH_POLL_S="0.5")
    run_script("create_topics.sh", env=env)
    settings = config.load(env)
    installed = secrets.all_secrets(settings)
    ingest_url = f"http://localhost:{settings.api_port}"
    registration_url = f"http://localhost:{settings.registration_port}"
    token_port = free_port()
    token_url = f"http://localhost:{token_port}"
    with running(log_dir, "emoji_api", "emoji_api.py", env=env) as ingest, \
            running(log_dir, "emoji_api_tokens", "emoji_api.py", "--port", str(token_port),
                    env=dict(env, API_REQUIRE_TOKEN="true")) as ingest_tokens, \
            running(log_dir, "ws_server_1", "ws_server.py", "--cluster", "1", env=env), \
            running(log_dir, "registration_api", "registration_api.py", env=env) as registration:
        wait_for_health(f"{ingest_url}/health", ingest, timeout_s=60)
        wait_for_health(f"{token_url}/health", ingest_tokens, timeout_s=60)
        wait_for_health(f"{registration_url}/health", registration, timeout_s=60)
        yield {"ingest": ingest_url, "ingest_tokens": token_url,
               "registration": registration_url, "admin_key": installed[secrets.ADMIN_KEY],
               "token": tokens.issue(installed[secrets.TOKEN_SECRET], "fuzzer", 1, 600,
                                     time.time())}
        for service in (ingest, ingest_tokens, registration):
            assert service.stop(timeout_s=30) == 0, service.log()
            assert "Traceback" not in service.log(), service.log()


@pytest.mark.parametrize("name", ["ingest", "registration"])
def test_each_api_serves_its_document_as_kept_in_the_repository(apis, name):
    answer = requests.get(f"{apis[name]}/openapi.json", timeout=5)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    # The file's, with the configured emojis (the test run's are the defaults the file names).
    assert answer.json() == json.loads(DOCUMENTS[name].read_text())
    assert answer.json()["openapi"].startswith("3.")


def test_with_api_require_token_the_document_requires_it(apis):
    document = requests.get(f"{apis['ingest_tokens']}/openapi.json", timeout=5).json()
    for path in ("/emoji", "/emojis"):
        assert document["paths"][path]["post"]["security"] == [{"viewerToken": []}]
    event = document["components"]["schemas"]["Event"]
    assert event["required"] == ["emoji_type", "timestamp"]
    assert "Ignored" in event["properties"]["user_id"]["description"]


# A document cannot say every rule of an event (an ISO-8601 timestamp, a user id of printable
# characters, the configured EMOJIS, a known stream): a schema-valid request may be answered 400.
# So schemathesis's "schema-valid data is accepted" check is off; every other check is on, and
# that 400 must still be documented, with its JSON body. A schema-violating request must be
# refused, and 413 (a batch over API_MAX_BATCH) is a refusal too.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429",
            "5xx"]
CHECKS = schemathesis.Config.from_dict({"checks": {
    "positive_data_acceptance": {"enabled": False},
    "negative_data_rejection": {"expected-statuses": REFUSALS}}})


def load(url: str):
    return schemathesis.openapi.from_url(f"{url}/openapi.json", config=CHECKS)


def fuzz(schema, base_url: str, headers: dict | None = None) -> dict[str, set[int]]:
    """Every operation of ``schema``, EXAMPLES_PER_OPERATION requests of each generation mode,
    each answer validated with schemathesis's checks; the statuses each operation answered."""
    sent: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                      derandomize=True, suppress_health_check=list(HealthCheck))
            def run(case):
                label = f"{case.operation.method.upper()} {case.operation.path}"
                answer = case.call_and_validate(base_url=base_url, headers=headers)
                sent.setdefault(label, set()).add(answer.status_code)

            try:
                run()
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise  # else: nothing of the operation can violate the document (no input)
    return sent


def test_the_live_apis_answer_as_documented_under_fuzzing(apis):
    started = time.monotonic()
    ingest = fuzz(load(apis["ingest"]), apis["ingest"])
    registration = fuzz(load(apis["registration"]), apis["registration"],
                        headers={"Authorization": f"Bearer {apis['admin_key']}"})
    # An ingest API with API_REQUIRE_TOKEN: with a viewer's token (its 200 events a burst are
    # soon spent), and without one.
    with_token = fuzz(load(apis["ingest_tokens"]), apis["ingest_tokens"],
                      headers={"Authorization": f"Bearer {apis['token']}"})
    without_token = fuzz(load(apis["ingest_tokens"]), apis["ingest_tokens"])
    took = time.monotonic() - started
    print(f"fuzzed in {took:.1f} s: ingest {ingest}, registration {registration}, ingest "
          f"with a token {with_token}, without {without_token}")
    # (schemathesis leaves out the document's own route: the first test checks it)
    assert set(ingest) == {"POST /emoji", "POST /emojis", "GET /health", "GET /metrics"}
    assert {"POST /register", "POST /deregister", "GET /clusters", "GET /streams",
            "POST /streams", "DELETE /streams/{stream_id}", "GET /streams/{stream_id}/windows",
            "GET /streams/{stream_id}/moments", "GET /health", "GET /metrics",
            "GET /", "GET /config.json"} == set(registration)
    # Both what succeeds and what fails was reached (a generated batch is rarely all valid:
    # other tests post valid ones).
    assert {200, 400} <= ingest["POST /emoji"] and 400 in ingest["POST /emojis"]
    assert {200, 400} <= registration["POST /register"]
    assert {201, 400} <= registration["POST /streams"]
    assert {400, 404} <= registration["GET /streams/{stream_id}/windows"]
    assert 200 in with_token["POST /emoji"]
    assert 429 in with_token["POST /emoji"] | with_token["POST /emojis"]  # the viewer's burst
    assert without_token["POST /emoji"] == without_token["POST /emojis"] == {401}
    assert took < RUN_LIMIT_S
