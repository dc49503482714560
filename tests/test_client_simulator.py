"""client_simulator.py as a real process, with a real registration API and WebSocket server and
a fake publisher (a WebSocket client with the subscriber key)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from websockets.sync.client import connect

from emojistream import config
from emojistream.common import tokens
from tests.services import (
    Service,
    assert_clean_log,
    free_port,
    get_json,
    run,
    wait_for_health,
    wait_until,
)

KEY = "simulator-test-key-with-32-bytes-or-more"
UNREACHABLE = "http://localhost:1"
UPDATE = {"window_start": "2026-11-27T07:00:00.000Z", "window_end": "2026-11-27T07:00:02.000Z",
          "aggregates": [{"emoji_type": "🔥", "count": 1234, "normalized_count": 13,
                          "unique_users": 57},
                         {"emoji_type": "😂", "count": 5, "normalized_count": 0,
                          "unique_users": 3}]}


def text(message: dict) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def seen(update: dict, watching: int = 1) -> str:
    """An update as a viewer prints it: with its stream's viewers ("watching")."""
    return text(dict(update, watching=watching))


class Services:
    """A registration API and cluster 1's WebSocket server (the only cluster)."""

    def __init__(self, test_env: dict, log_dir, stack: ExitStack):
        self.log_dir = log_dir
        self.stack = stack
        self.ws_port = free_port()
        self.publish_port = free_port()
        self.registration_port = free_port()
        self.env = dict(test_env, CLUSTER_COUNT="1", WS_FIRST_PORT=str(self.ws_port),
                        WS_PUBLISH_FIRST_PORT=str(self.publish_port),
                        REGISTRATION_PORT=str(self.registration_port), SUBSCRIBER_KEY=KEY,
                        TOKEN_SECRET="simulator-test-token-secret-32-bytes-or-more",
                        WS_HEALTH_POLL_S="0.2",
                        VIEWER_RETRY_INITIAL_S="0.2", VIEWER_RETRY_MAX_S="1",
                        # Every version reaches the simulator: publish() sends them at once,
                        # which the server would otherwise conflate (tests/test_ws_server.py).
                        WS_CONFLATE="false")
        self.registration_url = f"http://localhost:{self.registration_port}"
        registration = self.start("registration_api", "registration_api.py")
        wait_for_health(f"{self.registration_url}/health", registration)
        self.ws_server = self.start_ws_server()
        self.wait_for_cluster(healthy=True)

    def wait_for_cluster(self, healthy: bool) -> None:
        """Wait until the registration API's health polls see the server up (or down)."""
        wait_until(lambda: get_json(f"{self.registration_url}/clusters")[1][0]["healthy"]
                   is healthy, timeout_s=15, message=f"cluster1 never became healthy={healthy}")

    def start(self, name: str, *args: str, **options) -> Service:
        service = Service(self.log_dir, name, *args, env=self.env, **options)
        self.stack.callback(service.kill)
        return service

    def start_ws_server(self) -> Service:
        service = self.start(f"ws_server_{time.monotonic_ns()}", "ws_server.py", "--cluster", "1")
        wait_for_health(f"http://localhost:{self.ws_port}/health", service)
        return service

    def simulator(self, client_id: str, *args: str, name: str = "simulator") -> Service:
        stdout = open(self.log_dir / f"{name}.out", "w")
        self.stack.callback(stdout.close)
        return self.start(name, "client_simulator.py", client_id, "--registration-url",
                          self.registration_url, *args, stdout=stdout)

    def output(self, name: str = "simulator") -> str:
        return (self.log_dir / f"{name}.out").read_text(encoding="utf-8")

    def viewers(self) -> int:
        return get_json(f"http://localhost:{self.ws_port}/health")[1]["viewers"]

    def wait_for_viewer(self, viewers: int = 1) -> None:
        wait_until(lambda: self.viewers() == viewers, timeout_s=30,
                   message="the simulator did not register and connect")

    def publish(self, *messages: dict) -> None:
        with connect(f"ws://127.0.0.1:{self.publish_port}/publish",
                     additional_headers={"Authorization": f"Bearer {KEY}"}, open_timeout=5) as ws:
            for message in messages:
                ws.send(text(message))
            ws.ping().wait(5)


@pytest.fixture
def services(test_env, tmp_path):
    with ExitStack() as stack:
        yield Services(test_env, tmp_path, stack)


def test_print_json_prints_each_update_exactly_and_sigterm_closes_the_connection(services):
    simulator = services.simulator("sim-json", "--print-json", "--api-url", UNREACHABLE)
    services.wait_for_viewer()
    newer = dict(UPDATE, aggregates=[dict(UPDATE["aggregates"][0], count=1300)])
    services.publish(UPDATE, newer)
    wait_until(lambda: services.output().count("\n") == 2, timeout_s=10,
               message="the updates were not printed")
    assert simulator.stop() == 0
    assert services.output() == seen(UPDATE) + "\n" + seen(newer) + "\n"
    wait_until(lambda: services.viewers() == 0, message="the connection stayed open")
    log = simulator.log()
    assert_clean_log(log)
    assert f"WARNING client_simulator: ingest API {UNREACHABLE} is not reachable" in log
    assert "deregister" not in log  # nothing to forget: the registration API remembers nobody
    assert "INFO    client_simulator: received 2 message(s); sent " in log


def test_readable_lines_one_per_update(services):
    services.env["TZ"] = "UTC"
    simulator = services.simulator("sim-lines", "--rate", "0")
    services.wait_for_viewer()
    newer = dict(UPDATE, aggregates=[UPDATE["aggregates"][0],
                                     dict(UPDATE["aggregates"][1], count=6)])
    later = {"window_start": "2026-11-27T07:00:02.000Z",
             "window_end": "2026-11-27T07:00:04.000Z", "aggregates": []}
    services.publish(UPDATE, newer, later)
    wait_until(lambda: services.output().count("\n") == 3, timeout_s=10)
    assert simulator.stop() == 0
    assert services.output().splitlines() == [
        "07:00:00–07:00:02  🔥 ×1234 (13)  😂 ×5  [users: 🔥 57, 😂 3]",
        "07:00:00–07:00:02  🔥 ×1234 (13)  😂 ×6  [users: 🔥 57, 😂 3]  ↻",
        "07:00:02–07:00:04  (no reactions)",
    ]


def test_quiet_prints_nothing(services):
    services.env["LOG_LEVEL"] = "DEBUG"
    simulator = services.simulator("sim-quiet", "--quiet", "--rate", "0")
    services.wait_for_viewer()
    services.publish(UPDATE)
    simulator.wait_for_log("DEBUG   client_simulator: received message 1 (")
    assert simulator.stop() == 0
    assert services.output() == ""
    assert "INFO    client_simulator: received 1 message(s)" in simulator.log()


def test_duration_ends_the_run(services):
    started = time.monotonic()
    simulator = services.simulator("sim-short", "--duration", "2", "--rate", "0")
    assert simulator.process.wait(timeout=60) == 0
    assert time.monotonic() - started >= 2
    wait_until(lambda: services.viewers() == 0, message="the connection stayed open")
    assert "INFO    client_simulator: received 0 message(s)" in simulator.log()


def test_a_second_simulator_with_the_same_client_id_cannot_evict_the_first(services):
    """Another party registering the same client id gets a session of its own: both watch,
    and the first is never closed (before sessions, it was closed with 4409 and stopped)."""
    first = services.simulator("sim-twin", "--print-json", "--rate", "0", name="first")
    services.wait_for_viewer()
    second = services.simulator("sim-twin", "--print-json", "--rate", "0", name="second")
    services.wait_for_viewer(2)
    services.publish(UPDATE)
    for name in ("first", "second"):
        wait_until(lambda n=name: services.output(n) == seen(UPDATE, watching=2) + "\n",
                   timeout_s=10)
    assert first.process.poll() is None and second.process.poll() is None
    assert second.stop() == 0
    services.wait_for_viewer(1)
    later = dict(UPDATE, window_start="2026-11-27T07:00:02.000Z",
                 window_end="2026-11-27T07:00:04.000Z")
    services.publish(later)
    wait_until(lambda: services.output("first").count("\n") == 2, timeout_s=10)
    assert first.stop() == 0
    assert "4409" not in first.log()
    assert_clean_log(first.log())


def test_sigint_exits_0(services):
    simulator = services.simulator("sim-int", "--rate", "0")
    services.wait_for_viewer()
    simulator.process.send_signal(signal.SIGINT)
    assert simulator.process.wait(timeout=30) == 0
    wait_until(lambda: services.viewers() == 0, message="the connection stayed open")
    assert_clean_log(simulator.log())


def test_a_dropped_connection_is_reestablished(services):
    simulator = services.simulator("sim-again", "--print-json", "--rate", "0")
    services.wait_for_viewer()
    assert services.ws_server.stop() == 0
    simulator.wait_for_log("registering again and reconnecting in")
    # The only cluster is down: registering again is a 503 until it is back.
    simulator.wait_for_log("WARNING client_simulator: could not register again: /register "
                           "answered 503: no cluster is available")
    services.ws_server = services.start_ws_server()
    services.wait_for_viewer()
    services.publish(UPDATE)
    wait_until(lambda: services.output() == seen(UPDATE) + "\n", timeout_s=10)
    assert simulator.stop() == 0
    log = simulator.log()
    assert_clean_log(log)
    # It presented its token: the same session, on the same (only) cluster.
    assert "INFO    client_simulator: registered again: cluster1, same session" in log
    assert "token=" not in log  # a credential is not logged


def test_a_refused_token_makes_it_register_again(services):
    """The server refuses a token signed with another secret (4401): the simulator registers
    again and reconnects, with backoff; once the secrets agree it receives."""
    services.ws_server.stop()
    services.env["TOKEN_SECRET"] = "another-token-secret-of-32-bytes-or-more"
    services.ws_server = services.start_ws_server()
    services.wait_for_cluster(healthy=True)
    simulator = services.simulator("sim-token", "--print-json", "--rate", "0")
    simulator.wait_for_log("refused the token: 4401 invalid token); registering again and "
                           "reconnecting in", count=2)
    log = simulator.log()
    # Backoff: the attempts are numbered, the delays grow.
    assert "(attempt 1)" in log and "(attempt 2)" in log
    services.ws_server.stop()
    services.env["TOKEN_SECRET"] = "simulator-test-token-secret-32-bytes-or-more"
    services.ws_server = services.start_ws_server()
    services.wait_for_viewer()
    services.publish(UPDATE)
    wait_until(lambda: services.output() == seen(UPDATE) + "\n", timeout_s=10)
    assert simulator.stop() == 0
    assert_clean_log(simulator.log())


def test_it_waits_for_a_cluster_when_none_is_available_at_start(services):
    services.ws_server.stop()
    services.wait_for_cluster(healthy=False)
    simulator = services.simulator("sim-wait", "--print-json", "--rate", "0")
    simulator.wait_for_log("WARNING client_simulator: /register answered 503: no cluster is "
                           "available")
    services.ws_server = services.start_ws_server()
    services.wait_for_viewer()
    services.publish(UPDATE)
    wait_until(lambda: services.output() == seen(UPDATE) + "\n", timeout_s=10)
    assert simulator.stop() == 0
    assert_clean_log(simulator.log())


def test_an_unreachable_registration_api_is_a_one_line_error(test_env):
    result = run("client_simulator.py", "sim-x", "--registration-url", UNREACHABLE,
                 env=test_env, timeout_s=30)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(f"ERROR   client_simulator: the registration API at {UNREACHABLE} "
                             "is not reachable (ConnectionError); is registration_api.py "
                             "running?")


def test_a_refused_client_id_is_a_one_line_error(services):
    result = run("client_simulator.py", "x" * 65, "--registration-url",
                 services.registration_url, env=services.env, timeout_s=30)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith("ERROR   client_simulator: /register answered 400: client_id is "
                             "longer than 64 characters")


def test_stream_option_watches_and_reacts_to_that_stream_only(test_env, tmp_path, ingest):
    with ExitStack() as stack:
        services = Services(dict(test_env, STREAMS="main,final-2026"), tmp_path, stack)
        simulator = services.simulator("sim-final", "--print-json", "--stream", "final-2026",
                                       "--rate", "20", "--batch", "2", "--api-url", ingest.url)
        services.wait_for_viewer()
        main_update = dict(UPDATE, stream_id="main")
        final_update = dict(UPDATE, stream_id="final-2026",
                            aggregates=[dict(UPDATE["aggregates"][0], count=7)])
        services.publish(main_update, final_update)
        wait_until(lambda: services.output() == seen(final_update) + "\n", timeout_s=10)
        wait_until(lambda: len(ingest.requests) >= 2, timeout_s=10)
        assert simulator.stop() == 0
        assert services.output() == seen(final_update) + "\n"  # never main's update
        events = [event for _, body in ingest.requests for event in body]
        assert {event["stream_id"] for event in events} == {"final-2026"}
        assert "stream final-2026" in next(line for line in simulator.log().splitlines()
                                           if "registered 'sim-final': " in line)


def test_an_unknown_stream_is_a_one_line_error(services):
    result = run("client_simulator.py", "sim-x", "--stream", "no-such-match",
                 "--registration-url", services.registration_url, env=services.env,
                 timeout_s=30)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith("ERROR   client_simulator: /register answered 404: unknown "
                             "stream_id 'no-such-match': GET /streams on the registration API "
                             "lists the live streams")


@pytest.mark.parametrize("args", [["--rate", "-1"], ["--batch", "0"], ["--rate", "fast"]])
def test_bad_options_are_usage_errors(args):
    result = run("client_simulator.py", "sim", *args, env=dict(os.environ))
    assert result.returncode == 2
    assert "usage: client_simulator.py" in result.stderr


def test_help_exits_0():
    result = run("client_simulator.py", "--help", env=dict(os.environ))
    assert result.returncode == 0
    for option in ("--stream", "--rate", "--batch", "--duration", "--registration-url", "--api-url",
                   "--quiet", "--print-json"):
        assert option in result.stdout


# --- sending emojis ---------------------------------------------------------------------------

class FakeIngest:
    """An ingest API that records what it is sent and answers 503 to the first request."""

    def __init__(self, first: tuple[int, dict] = (503, {"error": "Kafka is unavailable; "
                                                                 "try again shortly"})):
        self.requests: list[tuple[str, object]] = []
        self.authorizations: list[str | None] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, body))
                fake.authorizations.append(self.headers.get("Authorization"))
                if len(fake.requests) == 1:
                    self._answer(*first)
                elif isinstance(body, list):
                    self._answer(200, {"status": "success", "accepted": len(body),
                                       "rejected": []})
                else:
                    self._answer(200, {"status": "success"})

            def _answer(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("localhost", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_refused_token_is_renewed_and_the_request_sent_again(services):
    """An ingest API with API_REQUIRE_TOKEN answers 401 once the token expired (an open
    WebSocket connection outlives its token): the simulator registers again for a fresh token
    and sends the same request once more."""
    ingest = FakeIngest(first=(401, {"error": "token expired"}))
    try:
        simulator = services.simulator("sim-renew", "--quiet", "--rate", "10", "--api-url",
                                       ingest.url, "--duration", "2")
        assert simulator.process.wait(timeout=60) == 0
    finally:
        ingest.close()
    log = simulator.log()
    assert_clean_log(log)
    assert ('client_simulator: ingest API refused the token ({"error": "token expired"}); '
            "registering again for a fresh one") in log
    assert ingest.requests[0] == ingest.requests[1]  # the same request, sent again
    assert all(a and a.startswith("Bearer ") for a in ingest.authorizations)
    sent = len(ingest.requests) - 1
    assert f"sent {sent} emoji(s), {sent} accepted" in log


@pytest.fixture
def ingest():
    fake = FakeIngest()
    yield fake
    fake.close()


def assert_valid_event(event: dict, client_id: str, started: datetime) -> None:
    assert set(event) == {"user_id", "emoji_type", "timestamp"}  # no stream_id: main
    assert event["user_id"] == client_id
    assert event["emoji_type"] in config.load().allowed_emojis
    assert event["timestamp"].endswith("Z")
    moment = datetime.fromisoformat(event["timestamp"])
    assert started - timedelta(seconds=1) <= moment <= datetime.now(UTC)


@pytest.mark.parametrize("batch, path", [(1, "/emoji"), (5, "/emojis")])
def test_emojis_are_sent_at_the_rate_and_a_503_does_not_stop_it(services, ingest, batch, path):
    started = datetime.now(UTC)
    simulator = services.simulator("sim-sender", "--quiet", "--rate", "20", "--batch",
                                   str(batch), "--api-url", ingest.url, "--duration", "3")
    assert simulator.process.wait(timeout=60) == 0
    # 20 events/s for 3 s: 60 events, give or take the machine's timing.
    sent = ingest.requests
    assert 30 <= len(sent) * batch <= 70, len(sent)
    assert {p for p, _ in sent} == {path}
    if batch > 1:
        assert all(len(body) == batch for _, body in sent)
    events = [e for _, body in sent for e in (body if batch > 1 else [body])]
    for event in events:
        assert_valid_event(event, "sim-sender", started)
    log = simulator.log()
    assert_clean_log(log)
    assert 'WARNING client_simulator: ingest API answered 503: {"error": "Kafka is unavailable; ' \
           'try again shortly"}' in log
    assert f"sent {len(events)} emoji(s), {len(events) - batch} accepted" in log
    # Each request carries the viewer's token (API_REQUIRE_TOKEN requires it).
    assert len(ingest.authorizations) == len(sent)
    for authorization in ingest.authorizations:
        scheme, token = authorization.split(" ")
        assert scheme == "Bearer"
        admission = tokens.verify(services.env["TOKEN_SECRET"], token, 1, time.time())
        assert (admission.client_id, admission.stream_id) == ("sim-sender", "main")


def window_update(start: datetime, fire: int) -> dict:
    return {"window_start": start.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "window_end": (start + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "aggregates": [{"emoji_type": "🔥", "count": fire, "normalized_count": 0,
                            "unique_users": 1}]}


def test_since_recovers_and_every_reconnection_passes_the_newest_window_seen(services):
    base = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    w = [window_update(base + timedelta(seconds=2 * i), i + 1) for i in range(5)]
    services.publish(*w[:4])  # nobody watches yet: the server holds them
    simulator = services.simulator("sim-since", "--print-json", "--rate", "0", "--since",
                                   w[1]["window_start"])
    services.wait_for_viewer()

    def recovery(since: dict, complete: bool, windows: int) -> str:
        return text({"type": "recovery", "since": since["window_start"], "complete": complete,
                     "windows": windows})

    first = [recovery(w[1], True, 2), seen(w[2]), seen(w[3])]
    wait_until(lambda: services.output().splitlines() == first, timeout_s=10,
               message=f"not {first}: {services.output()!r}")
    # Its server restarts (holding nothing): the reconnection asks for what came after w3.
    assert services.ws_server.stop() == 0
    services.ws_server = services.start_ws_server()
    services.wait_for_viewer()
    services.publish(w[4])
    expected = [*first, recovery(w[3], False, 0), seen(w[4])]
    wait_until(lambda: services.output().splitlines() == expected, timeout_s=10,
               message=f"not {expected}: {services.output()!r}")
    assert simulator.stop() == 0
    log = simulator.log()
    assert_clean_log(log)
    assert f"INFO    client_simulator: recovery after {w[1]['window_start']}: 2 window(s), " \
           "complete" in log
    assert f"INFO    client_simulator: recovery after {w[3]['window_start']}: 0 window(s), " \
           "incomplete" in log
    assert "token=" not in log


def test_a_malformed_since_option_is_a_usage_error():
    result = run("client_simulator.py", "sim", "--since", "yesterday", env=dict(os.environ))
    assert result.returncode == 2
    assert "argument --since: timestamp 'yesterday' is not ISO-8601" in result.stderr
