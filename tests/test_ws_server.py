"""ws_server.py as a real process: fan-out, deduplication, viewer tokens, subscriber
authentication, health. (tests/test_delivery.py covers the token refusals and the scale.)"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from urllib.parse import quote
from urllib.request import urlopen

import pytest
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.sync.client import connect

from emojistream.common import tokens
from tests.services import (
    Service,
    assert_clean_log,
    free_port_run,
    get_json,
    run,
    running,
    wait_for_health,
    wait_until,
)

CLUSTER = 2
KEY = "test-subscriber-key-with-32-bytes-or-more"
TOKEN_SECRET = "test-token-secret-with-32-bytes-or-more"
QUIET_S = 1.0  # how long "nothing arrives" is watched for


def update(window_start: str, **counts) -> dict:
    """A window update; ``counts`` maps names in EMOJI to counts."""
    return {"window_start": window_start, "window_end": window_start.replace(":00.", ":02."),
            "aggregates": [{"emoji_type": EMOJI[name], "count": count,
                            "normalized_count": 0, "unique_users": 1}
                           for name, count in counts.items()]}


EMOJI = {"fire": "🔥", "laugh": "😂", "clap": "👏"}


def unique_window() -> str:
    """A window start no other test uses (the server remembers windows across connections)."""
    minute = uuid.uuid4().int % 60
    hour = uuid.uuid4().int % 24
    return f"2026-11-{10 + uuid.uuid4().int % 18:02d}T{hour:02d}:{minute:02d}:00.000Z"


def token(client_id: str, cluster: int = CLUSTER, ttl_s: float = 60,
          session: str | None = None) -> str:
    """A token as the registration API issues it: in ``session``, else a new one."""
    return tokens.issue(TOKEN_SECRET, client_id, cluster, ttl_s, time.time(),
                        session=session or tokens.new_session())


def text(message: dict) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


class Server:
    """A running ws_server.py for cluster 2 and ways to reach it."""

    def __init__(self, service: Service, port: int, publish_port: int):
        self.service = service
        self.port = port
        self.publish_port = publish_port
        self.url = f"ws://localhost:{port}"
        self.publish_url = f"ws://127.0.0.1:{publish_port}/publish"
        self.health_url = f"http://localhost:{port}/health"

    def viewer(self, client_id: str = "viewer", session: str | None = None,
               token_text: str | None = None):
        token_text = token_text or token(client_id, session=session)
        return connect(f"{self.url}/?token={quote(token_text)}&presence=0", open_timeout=5)

    def publisher(self, key: str | None = KEY):
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return connect(self.publish_url, additional_headers=headers, open_timeout=5)

    def health(self) -> dict:
        status, body = get_json(self.health_url)
        assert status == 200
        return body

    def wait_for_counts(self, viewers: int, subscribers: int, timeout_s: float = 10) -> None:
        expected = {"cluster": CLUSTER, "status": "ok", "viewers": viewers,
                    "subscribers": subscribers}
        wait_until(lambda: without_streams(self.health()) == expected, timeout_s=timeout_s,
                   message=f"health never became {expected}; last {self.health()}")


def without_streams(health: dict) -> dict:
    """A health answer without its per-stream part."""
    return {name: value for name, value in health.items() if name != "streams"}


def server_ports() -> tuple[int, int]:
    """Cluster CLUSTER's viewers' and publishers' ports, each range (FIRST_PORT + N - 1 for the
    three clusters) free and apart from the other: the server refuses ranges that overlap."""
    return free_port_run(3) + CLUSTER - 1, free_port_run(3) + CLUSTER - 1


def server_env(test_env: dict, port: int, publish_port: int, **extra) -> dict:
    return dict(test_env, WS_FIRST_PORT=str(port - CLUSTER + 1),
                WS_PUBLISH_FIRST_PORT=str(publish_port - CLUSTER + 1), SUBSCRIBER_KEY=KEY,
                TOKEN_SECRET=TOKEN_SECRET,
                **{name: str(value) for name, value in extra.items()})


@pytest.fixture
def start_server(test_env, tmp_path):
    """Starts ws_server.py --cluster 2 on a free port (with extra environment variables)."""
    started = []

    def start(**extra) -> Server:
        port, publish_port = server_ports()
        service = Service(tmp_path, f"ws_server_{len(started)}", "ws_server.py", "--cluster",
                          str(CLUSTER), env=server_env(test_env, port, publish_port, **extra))
        started.append(service)
        server = Server(service, port, publish_port)
        if "WS_TLS_CERT" in extra:  # the viewers' port speaks TLS: health from the other one
            server.health_url = f"http://127.0.0.1:{publish_port}/health"
        wait_for_health(server.health_url, service)
        return server

    yield start
    for service in started:
        service.kill()


@pytest.fixture
def server(start_server) -> Server:
    return start_server()


def assert_nothing_arrives(connection) -> None:
    with pytest.raises(TimeoutError):
        connection.recv(timeout=QUIET_S)


# --- fan-out ----------------------------------------------------------------------------------

def test_an_update_reaches_every_viewer_exactly(server):
    message = update(unique_window(), fire=1234, laugh=5)
    with server.viewer("a") as first, server.viewer("b") as second, \
            server.publisher() as publisher:
        server.wait_for_counts(viewers=2, subscribers=1)
        publisher.send(text(message))
        for viewer in (first, second):
            received = viewer.recv(timeout=5)
            assert received == text(message)
            assert json.loads(received) == message
            assert_nothing_arrives(viewer)


def test_an_identical_update_for_a_window_is_not_sent_again(server):
    window = unique_window()
    first, changed = update(window, fire=10), update(window, fire=11)
    with server.viewer() as viewer, server.publisher() as publisher:
        server.wait_for_counts(viewers=1, subscribers=1)
        publisher.send(text(first))
        assert viewer.recv(timeout=5) == text(first)
        publisher.send(text(first))
        assert_nothing_arrives(viewer)
        publisher.send(text(changed))
        assert viewer.recv(timeout=5) == text(changed)


def test_repeats_are_recognised_by_content_and_across_subscriber_connections(server):
    window = unique_window()
    message = update(window, laugh=3, clap=1)
    with server.viewer() as viewer:
        with server.publisher() as owner:
            server.wait_for_counts(viewers=1, subscribers=1)
            owner.send(text(message))
            assert viewer.recv(timeout=5) == text(message)
        # The standby redelivers the same record after a failover, formatted differently.
        with server.publisher() as standby:
            standby.send(json.dumps(message, indent=2))
            assert_nothing_arrives(viewer)
            newer = update(window, laugh=4, clap=1)
            standby.send(text(newer))
            assert viewer.recv(timeout=5) == text(newer)


def test_a_newer_update_for_a_window_replaces_the_earlier(server):
    window = unique_window()
    old, new = update(window, fire=1), update(window, fire=2)
    with server.viewer() as viewer, server.publisher() as publisher:
        server.wait_for_counts(viewers=1, subscribers=1)
        for message in (old, new):
            publisher.send(text(message))
            assert viewer.recv(timeout=5) == text(message)
        # A repeat of an older version (a lagging subscriber's copy) is not sent after the newer.
        publisher.send(text(old))
        assert_nothing_arrives(viewer)


def test_two_subscribers_forwarding_everything_deliver_each_version_once_in_order(server):
    """Both subscribers of a cluster forward every update; one lags behind the other."""
    window, later = unique_window(), unique_window()
    versions = [update(window, fire=1), update(window, fire=2), update(later, clap=1),
                update(window, fire=3), update(later, clap=2)]
    with server.viewer() as viewer, server.publisher() as ahead, \
            server.publisher() as behind:
        server.wait_for_counts(viewers=1, subscribers=2)

        def first_copy(publisher, version):
            publisher.send(text(version))
            assert viewer.recv(timeout=5) == text(version)

        first_copy(ahead, versions[0])
        first_copy(ahead, versions[1])
        behind.send(text(versions[0]))
        first_copy(ahead, versions[2])
        behind.send(text(versions[1]))
        behind.send(text(versions[2]))
        first_copy(behind, versions[3])  # this time the lagging one is first
        ahead.send(text(versions[3]))
        first_copy(ahead, versions[4])
        behind.send(text(versions[4]))
        assert_nothing_arrives(viewer)
    assert server.service.stop() == 0
    assert "stopped: 5 update(s) broadcast, 5 repeated, 0 stale" in server.service.log()


def window_at(second: int) -> str:
    return f"2026-11-27T07:00:{second:02d}.000Z"


def test_deduplication_remembers_a_bounded_number_of_windows(start_server):
    # Without conflation: the burst would otherwise let window 2's newer version replace
    # the queued older one (tested below).
    server = start_server(WS_DEDUP_WINDOWS=2, WS_CONFLATE="false")
    first, second, third = (update(window_at(s), fire=s) for s in (0, 2, 4))
    with server.viewer() as viewer, server.publisher() as publisher:
        server.wait_for_counts(viewers=1, subscribers=1)
        for message in (first, second, third, second, first,
                        update(window_at(0), fire=99), update(window_at(2), fire=99)):
            publisher.send(text(message))
        received = [viewer.recv(timeout=5) for _ in range(4)]
        # second is still remembered (its repeat dropped); first was forgotten when third came,
        # and anything for a window older than those remembered is stale.
        assert received == [text(first), text(second), text(third),
                            text(update(window_at(2), fire=99))]
        assert_nothing_arrives(viewer)
    assert server.service.stop() == 0
    assert ("stopped: 4 update(s) broadcast, 1 repeated, 2 stale and 0 invalid dropped"
            in server.service.log())


def test_a_broadcast_in_batches_reaches_every_viewer_in_order(start_server):
    server = start_server(WS_BROADCAST_BATCH=2)
    messages = [update(window_at(s), fire=s) for s in (10, 12, 14)]
    with ExitStack() as connections:
        viewers = [connections.enter_context(server.viewer(f"v{i}")) for i in range(5)]
        publisher = connections.enter_context(server.publisher())
        server.wait_for_counts(viewers=5, subscribers=1)
        for message in messages:
            publisher.send(text(message))
        for viewer in viewers:
            assert [viewer.recv(timeout=5) for _ in messages] == [text(m) for m in messages]
            assert_nothing_arrives(viewer)


def metric(server: Server, name: str) -> float:
    """A counter of the server's GET /metrics (its full sample name)."""
    with urlopen(f"http://localhost:{server.port}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def test_a_server_that_keeps_up_sends_every_version_of_a_window(server):
    """Conflation (on by default) drops nothing while the server is not behind."""
    window = unique_window()
    versions = [update(window, fire=n) for n in range(1, 6)]
    with server.viewer("a") as first, server.viewer("b") as second, \
            server.publisher() as publisher:
        server.wait_for_counts(viewers=2, subscribers=1)
        for version in versions:
            publisher.send(text(version))
            assert [first.recv(timeout=5), second.recv(timeout=5)] == [text(version)] * 2
        assert_nothing_arrives(first)
    assert metric(server, "emojistream_ws_updates_conflated_total") == 0
    assert metric(server, "emojistream_ws_messages_sent_total") == 10


def burst_behind(server: Server, viewers: int) -> tuple[list[str], list[list[str]]]:
    """Ten versions of each of two windows, published at once to ``viewers`` viewers written to
    one at a time (WS_BROADCAST_BATCH=1), so that the server falls behind; what each viewer
    received up to the last version published."""
    early, late = window_at(20), window_at(22)
    published = [text(update(window, fire=n)) for window in (early, late) for n in range(1, 11)]
    with ExitStack() as connections:
        clients = [connections.enter_context(server.viewer(f"v{i}")) for i in range(viewers)]
        publisher = connections.enter_context(server.publisher())
        server.wait_for_counts(viewers=viewers, subscribers=1)
        for message in published:
            publisher.send(message)
        received = []
        for client in clients:  # until the last version published, which always comes last
            got = [client.recv(timeout=10)]
            while got[-1] != published[-1]:
                got.append(client.recv(timeout=10))
            received.append(got)
        assert_nothing_arrives(clients[-1])
    return published, received


def test_a_server_behind_sends_the_latest_version_and_every_final_count(start_server):
    server = start_server(WS_BROADCAST_BATCH=1)
    published, received = burst_behind(server, viewers=40)
    finals = [published[9], published[19]]
    for got in received:
        # In publishing order, both windows' last versions, nothing else than published.
        assert [published.index(m) for m in got] == sorted({published.index(m) for m in got})
        assert [m for m in got if m in finals] == finals
    sent = sum(len(got) for got in received)
    assert sent < 40 * len(published)  # superseded versions were dropped
    assert metric(server, "emojistream_ws_messages_sent_total") == sent
    assert metric(server, "emojistream_ws_updates_conflated_total") > 0
    assert server.service.stop() == 0
    conflated = metric_line(server.service.log())
    assert conflated > 0


def metric_line(log_text: str) -> int:
    """The conflated updates of the server's closing log line."""
    line = next(x for x in log_text.splitlines() if "stopped: " in x)
    return int(line.rsplit(", ", 1)[1].split()[0])


def test_without_conflation_a_server_behind_sends_every_version(start_server):
    server = start_server(WS_BROADCAST_BATCH=1, WS_CONFLATE="false")
    published, received = burst_behind(server, viewers=40)
    assert received == [published] * 40
    assert metric(server, "emojistream_ws_updates_conflated_total") == 0


@pytest.mark.parametrize("setting, negotiated", [
    ({}, None),
    ({"WS_COMPRESSION": "none"}, None),
    ({"WS_COMPRESSION": "deflate"}, "permessage-deflate"),
])
def test_compression_is_off_unless_configured(start_server, setting, negotiated):
    server = start_server(**setting)
    message = text(update(unique_window(), fire=3))
    # The client offers permessage-deflate (websockets' default).
    with server.viewer() as viewer, server.publisher() as publisher:
        assert viewer.response is not None
        extensions = viewer.response.headers.get("Sec-WebSocket-Extensions")
        assert (extensions.split(";")[0] if extensions else None) == negotiated
        server.wait_for_counts(viewers=1, subscribers=1)
        publisher.send(message)
        assert viewer.recv(timeout=5) == message


@pytest.mark.parametrize("name, value, allowed", [
    ("WS_COMPRESSION", "gzip", "none, deflate"),
    ("WS_EVENT_LOOP", "trio", "asyncio, uvloop"),
])
def test_an_unknown_choice_is_a_one_line_error(test_env, name, value, allowed):
    result = run("ws_server.py", "--cluster", str(CLUSTER),
                 env=server_env(test_env, *server_ports(), **{name: value}))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(f"ERROR   ws_server: {name} must be one of {allowed}, "
                             f"got {value!r}")


@pytest.mark.parametrize("setting, loop", [
    ({}, "asyncio"),
    ({"WS_EVENT_LOOP": "asyncio"}, "asyncio"),
    ({"WS_EVENT_LOOP": "uvloop"}, "uvloop"),
])
def test_the_event_loop_is_asyncio_unless_configured(start_server, setting, loop):
    server = start_server(**setting)
    message = text(update(unique_window(), fire=1234, laugh=5))
    with server.viewer() as viewer, server.publisher() as publisher:
        server.wait_for_counts(viewers=1, subscribers=1)
        publisher.send(message)
        assert viewer.recv(timeout=5) == message
        assert_nothing_arrives(viewer)
    ready = [line for line in server.service.log().splitlines() if "ws_server: ready:" in line]
    assert len(ready) == 1, ready
    assert ready[0].endswith(f"(one per connection); event loop {loop}"), ready[0]
    assert server.service.stop() == 0


def test_what_a_viewer_sends_reaches_nobody(server):
    message = update(unique_window(), clap=7)
    with server.viewer("talker") as talker, server.viewer("listener") as listener, \
            server.publisher() as publisher:
        server.wait_for_counts(viewers=2, subscribers=1)
        talker.send(text(update(unique_window(), fire=99)))
        talker.send("hello everyone")
        assert_nothing_arrives(listener)
        assert_nothing_arrives(talker)
        publisher.send(text(message))
        assert listener.recv(timeout=5) == text(message)
        assert talker.recv(timeout=5) == text(message)


def test_a_viewer_receives_nothing_a_publisher_did_not_send_to_viewers(server):
    """Publishers are not viewers: they receive no broadcast."""
    message = update(unique_window(), fire=1)
    with server.viewer() as viewer, server.publisher() as publisher:
        server.wait_for_counts(viewers=1, subscribers=1)
        publisher.send(text(message))
        assert viewer.recv(timeout=5) == text(message)
        assert_nothing_arrives(publisher)


@pytest.mark.parametrize("bad", [
    "not json",
    "[1, 2, 3]",
    '{"window_start": "2026-11-27T07:00:00.000Z"}',
    '{"window_start": "a", "window_end": "b", "aggregates": [{"emoji_type": "🔥"}]}',
    '{"window_start": "a", "window_end": "b", "aggregates": [{"emoji_type": "🔥", '
    '"count": "12"}]}',
    '{"window_start": "not a time", "window_end": "b", "aggregates": []}',
    b'{"window_start": "a", "window_end": "b", "aggregates": []}',
])
def test_an_invalid_publisher_message_is_skipped_and_the_server_keeps_working(server, bad):
    good = update(unique_window(), fire=5)
    with server.viewer() as viewer, server.publisher() as publisher:
        server.wait_for_counts(viewers=1, subscribers=1)
        publisher.send(bad)
        assert_nothing_arrives(viewer)
        publisher.send(text(good))  # on the same connection
        assert viewer.recv(timeout=5) == text(good)
    log = server.service.log()
    assert "WARNING ws_server: skipped an invalid update from 127.0.0.1:" in log


# --- subscriber authentication ----------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": f"Bearer {KEY}x"},
    {"Authorization": "Bearer "},
    {"Authorization": KEY},
    {"Authorization": "Basic " + base64.b64encode(f"user:{KEY}".encode()).decode()},
], ids=["missing", "wrong", "empty", "no-scheme", "basic"])
def test_a_publisher_without_the_key_is_refused_with_401(server, headers):
    with server.viewer():
        with pytest.raises(InvalidStatus) as refused:
            connect(server.publish_url, additional_headers=headers, open_timeout=5)
        response = refused.value.response
        assert response.status_code == 401
        assert response.body.decode() == ("missing or wrong subscriber key "
                                          "(send Authorization: Bearer <key>)\n")
        server.wait_for_counts(viewers=1, subscribers=0)
    assert server.service.stop() == 0  # the refusals' last line is written as it stops
    assert ("INFO    ws_server: refused 1 client(s) in the last " in server.service.log())
    assert " s: bad subscriber key 1\n" in server.service.log()


def test_a_viewer_token_is_not_a_subscriber_key(server):
    """A viewer can never publish: its token does not open /publish, in any form."""
    viewer_token = token("intruder")
    for headers in ({"Authorization": f"Bearer {viewer_token}"}, {}):
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{server.publish_url}?token={quote(viewer_token)}",
                    additional_headers=headers, open_timeout=5)
        assert refused.value.response.status_code == 401


def test_the_key_scheme_is_case_insensitive(server):
    with connect(server.publish_url, additional_headers={"Authorization": f"bearer {KEY}"},
                 open_timeout=5):
        server.wait_for_counts(viewers=0, subscribers=1)


# --- the publish listener, apart from the viewers' port ---------------------------------------

def test_publish_on_the_viewers_port_is_refused_even_with_the_key(server):
    with server.viewer() as viewer:
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{server.url}/publish", additional_headers={"Authorization": f"Bearer {KEY}"},
                    open_timeout=5)
        response = refused.value.response
        assert response.status_code == 403
        assert response.body.decode() == (
            "/publish is not served on the viewers' port: subscribers publish on the server's "
            "publish listener (WS_PUBLISH_HOST, WS_PUBLISH_FIRST_PORT)\n")
        server.wait_for_counts(viewers=1, subscribers=0)
        with server.publisher() as publisher:  # the publish listener takes the same key
            message = update(unique_window(), clap=3)
            publisher.send(text(message))
            assert viewer.recv(timeout=5) == text(message)


def test_the_publish_listener_takes_no_viewer_and_listens_on_loopback_only(server):
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{server.publish_port}/?token={quote(token('v'))}",
                open_timeout=5)
    assert refused.value.response.status_code == 404
    assert refused.value.response.body.decode() == (
        "no such endpoint on the publish listener: / (subscribers connect to /publish; viewers "
        "to the viewers' port)\n")
    assert listening_addresses(server.publish_port) == {"127.0.0.1"}
    assert listening_addresses(server.port) - {"127.0.0.1", "::1"} == set()  # WS_HOST=localhost
    # Health and metrics answer on both.
    status, body = get_json(f"http://127.0.0.1:{server.publish_port}/health")
    assert status == 200 and body["cluster"] == CLUSTER


def listening_addresses(port: int) -> set[str]:
    """The addresses of the sockets listening on TCP ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(address)
                # The kernel writes each 32-bit word in host (little-endian) order.
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
                found.add(socket.inet_ntop(socket.AF_INET if size == 4 else socket.AF_INET6,
                                           raw))
    return found


def test_refused_clients_are_logged_as_exact_counts_per_interval(start_server):
    server = start_server(REFUSALS_LOG_INTERVAL_S="60")
    for _ in range(5):
        with pytest.raises(InvalidStatus):
            server.publisher(key="wrong")
    for _ in range(3):
        with connect(f"{server.url}/?token=garbage", open_timeout=5) as refused:
            with pytest.raises(ConnectionClosed):
                refused.recv(timeout=5)
    for _ in range(2):
        with pytest.raises(InvalidStatus):
            connect(f"{server.url}/publish", additional_headers={"Authorization": f"Bearer {KEY}"},
                    open_timeout=5)
    server.wait_for_counts(viewers=0, subscribers=0)
    assert " refused " not in server.service.log()  # nothing yet: one line per interval
    assert server.service.stop() == 0
    lines = [line for line in server.service.log().splitlines()
             if "ws_server: refused" in line]
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r".* INFO    ws_server: refused 10 client\(s\) in the last [\d.]+ s: bad subscriber key 5, "
        r"invalid token \(4401\) 3, publish on the viewers' port 2", lines[0]), lines[0]


def self_signed(directory) -> tuple[str, str]:
    """A certificate for localhost and 127.0.0.1 and its key (openssl), as PEM files."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def test_viewers_connect_over_tls_when_the_server_has_a_certificate(start_server, tmp_path):
    cert, key = self_signed(tmp_path)
    server = start_server(WS_TLS_CERT=cert, WS_TLS_KEY=key)
    trusted = ssl.create_default_context(cafile=cert)
    url = f"wss://localhost:{server.port}/?token={quote(token('secure'))}"
    with connect(url, ssl=trusted, open_timeout=10) as viewer, server.publisher() as publisher:
        server.wait_for_counts(viewers=1, subscribers=1)
        message = update(unique_window(), fire=42)
        publisher.send(text(message))
        assert viewer.recv(timeout=5) == text(dict(message, watching=1))
    with pytest.raises(ssl.SSLCertVerificationError):  # an untrusted certificate is refused
        connect(url, ssl=ssl.create_default_context(), open_timeout=5)
    with pytest.raises((InvalidMessage, ConnectionError)):  # plain ws:// gets no WebSocket
        connect(f"ws://localhost:{server.port}/?token={quote(token('plain'))}", open_timeout=5)
    assert (f"serving viewers at wss://localhost:{server.port}/, subscribers at "
            f"ws://127.0.0.1:{server.publish_port}/publish") in server.service.log()


def test_an_unreadable_certificate_is_a_one_line_error(test_env, tmp_path):
    missing = tmp_path / "missing.pem"
    result = run("ws_server.py", "--cluster", str(CLUSTER),
                 env=server_env(test_env, *server_ports(), WS_TLS_CERT=missing,
                                WS_TLS_KEY=missing))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(f"ERROR   ws_server: cannot use WS_TLS_CERT={missing} and "
                             f"WS_TLS_KEY={missing}: [Errno 2] No such file or directory")


def test_the_secrets_are_generated_once_in_var_dir_when_not_configured(test_env, tmp_path):
    env = dict(test_env, VAR_DIR=str(tmp_path / "var"))
    env.pop("SUBSCRIBER_KEY", None)
    env.pop("TOKEN_SECRET", None)
    port, publish_port = server_ports()
    env["WS_FIRST_PORT"] = str(port - CLUSTER + 1)
    env["WS_PUBLISH_FIRST_PORT"] = str(publish_port - CLUSTER + 1)
    with running(tmp_path, "ws_server", "ws_server.py", "--cluster", str(CLUSTER),
                 env=env) as service:
        wait_for_health(f"http://localhost:{port}/health", service)
        key_file = tmp_path / "var" / "secrets" / "subscriber.key"
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        key = key_file.read_text().strip()
        assert len(key) == 43
        with connect(f"ws://127.0.0.1:{publish_port}/publish",
                     additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=5):
            pass
        token_file = tmp_path / "var" / "secrets" / "token.key"
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        secret = token_file.read_text().strip()
        assert len(secret) == 43 and secret != key
        viewer_token = tokens.issue(secret, "v", CLUSTER, 60, time.time())
        with connect(f"ws://localhost:{port}/?token={viewer_token}", open_timeout=5) as viewer:
            wait_until(lambda: get_json(f"http://localhost:{port}/health")[1]["viewers"] == 1)
            assert_nothing_arrives(viewer)
        assert service.stop() == 0


# --- health and plain HTTP --------------------------------------------------------------------

def test_health_counts_live_connections_exactly(server):
    assert server.health() == {"cluster": 2, "status": "ok", "viewers": 0, "subscribers": 0,
                               "streams": {}}
    with ExitStack() as connections:
        viewers = [connections.enter_context(server.viewer(f"v{i}")) for i in range(3)]
        publisher = connections.enter_context(server.publisher())
        server.wait_for_counts(viewers=3, subscribers=1)
        viewers.pop().close()
        server.wait_for_counts(viewers=2, subscribers=1)
        publisher.close()
        server.wait_for_counts(viewers=2, subscribers=0)
    server.wait_for_counts(viewers=0, subscribers=0)


def http_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("localhost", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return answer


def test_health_is_json_over_plain_http(server):
    answer = http_request(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert head.lower().count(b"content-type:") == 1
    assert b"Content-Type: application/json" in head
    assert json.loads(body) == {"cluster": 2, "status": "ok", "viewers": 0, "subscribers": 0,
                                "streams": {}}


@pytest.mark.parametrize("request_line, status, body", [
    (b"GET /nowhere HTTP/1.1", b"404 Not Found",
     b"no such endpoint: /nowhere (viewers connect to /, subscribers to /publish)\n"),
    (b"POST /health HTTP/1.1", b"405 Method Not Allowed",
     b"POST is not allowed on /health; use GET\n"),
])
def test_other_http_requests_get_a_clear_answer(server, request_line, status, body):
    answer = http_request(server.port, request_line + b"\r\nHost: x\r\n\r\n")
    head, answer_body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 " + status)
    assert answer_body == body


def test_a_viewer_that_stops_answering_pings_is_dropped(start_server):
    server = start_server(WS_PING_INTERVAL_S=1, WS_PING_TIMEOUT_S=1)
    # A bare TCP client that completes the handshake, then never reads again (no pongs).
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(("localhost", server.port), timeout=5) as sock:
        sock.sendall(b"GET /?token=" + token("frozen").encode() + b" HTTP/1.1\r\n"
                     b"Host: localhost\r\n"
                     b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        with server.viewer("alive") as alive:
            server.wait_for_counts(viewers=2, subscribers=0)
            # The frozen one is gone after the ping timeout and the closing handshake's
            # timeout (WS_CLOSE_TIMEOUT_S, 2 s).
            server.wait_for_counts(viewers=1, subscribers=0, timeout_s=30)
            assert_nothing_arrives(alive)  # and the one answering pings stays connected
        server.wait_for_counts(viewers=0, subscribers=0)


# --- streams ------------------------------------------------------------------------------------

def stream_viewer(server: Server, client_id: str, stream_id: str):
    issued = tokens.issue(TOKEN_SECRET, client_id, CLUSTER, 60, time.time(), stream_id=stream_id)
    return connect(f"{server.url}/?token={quote(issued)}&presence=0", open_timeout=5)


def test_each_viewer_gets_only_the_updates_of_its_own_stream(server):
    window = unique_window()
    of_a = dict(update(window, fire=3), stream_id="final-a")
    of_b = dict(update(window, laugh=4), stream_id="final-b")
    of_main = update(window, clap=5)  # an update that names no stream is of "main"
    with stream_viewer(server, "fan-a", "final-a") as fan_a, \
            stream_viewer(server, "fan-b", "final-b") as fan_b, \
            server.viewer("fan-main") as fan_main, server.publisher() as publisher:
        server.wait_for_counts(viewers=3, subscribers=1)
        for message in (of_a, of_b, of_main):
            publisher.send(text(message))
        assert fan_a.recv(timeout=5) == text(of_a)
        assert fan_b.recv(timeout=5) == text(of_b)
        assert fan_main.recv(timeout=5) == text(of_main)
        for viewer in (fan_a, fan_b, fan_main):
            assert_nothing_arrives(viewer)
        streams = server.health()["streams"]
        assert streams == {
            "final-a": {"viewers": 1, "last_window": window, "last_window_total": 3},
            "final-b": {"viewers": 1, "last_window": window, "last_window_total": 4},
            "main": {"viewers": 1, "last_window": window, "last_window_total": 5}}


def test_a_new_viewer_gets_the_latest_update_of_its_streams_two_newest_windows(server):
    hour = f"2026-11-{10 + uuid.uuid4().int % 18:02d}T{uuid.uuid4().int % 24:02d}"
    first, second, third = (f"{hour}:00:0{s}.000Z" for s in (0, 2, 4))
    sent = [dict(update(first, fire=1), stream_id="snap"),
            dict(update(second, fire=2), stream_id="snap"),
            dict(update(second, fire=3), stream_id="snap"),
            dict(update(third, fire=4), stream_id="snap"),
            dict(update(first, fire=9), stream_id="snap"),  # a late one for an older window
            update(third, laugh=7)]                         # another stream's
    with server.publisher() as publisher:
        server.wait_for_counts(viewers=0, subscribers=1)
        for message in sent:
            publisher.send(text(message))
        wait_until(lambda: server.health()["streams"].get("snap", {}).get("last_window")
                   == third)
        with stream_viewer(server, "late-comer", "snap") as viewer:
            assert [viewer.recv(timeout=5), viewer.recv(timeout=5)] == [text(sent[2]),
                                                                         text(sent[3])]
            assert_nothing_arrives(viewer)
            newest = dict(update(third, fire=5), stream_id="snap")
            publisher.send(text(newest))
            assert viewer.recv(timeout=5) == text(newest)
        with stream_viewer(server, "elsewhere", "nobody-sent-here") as viewer:
            assert_nothing_arrives(viewer)
    assert server.service.stop() == 0
    # Of the seven updates, only the one sent while the late-comer watched was broadcast: the
    # others cost no broadcast.
    assert "stopped: 7 update(s) broadcast, 0 repeated, 0 stale and 0 invalid dropped, 6 of a " \
           "stream nobody watched here" in server.service.log()


# --- recovery ---------------------------------------------------------------------------------

def two_second_windows(count: int) -> list[str]:
    """``count`` consecutive 2-s window starts in an hour no other test uses."""
    base = datetime(2026, 11, 10 + uuid.uuid4().int % 18, uuid.uuid4().int % 24, tzinfo=UTC)
    return [(base + timedelta(seconds=2 * i)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            for i in range(count)]


def recovering_viewer(server: Server, client_id: str, stream_id: str, since: str | None,
                      session: str | None = None):
    issued = tokens.issue(TOKEN_SECRET, client_id, CLUSTER, 60, time.time(), stream_id=stream_id,
                          session=session or tokens.new_session())
    query = f"token={quote(issued)}&presence=0" + (f"&since={quote(since)}" if since is not None
                                                   else "")
    return connect(f"{server.url}/?{query}", open_timeout=5)


def recovery(since: str, complete: bool, windows: int) -> str:
    return text({"type": "recovery", "since": since, "complete": complete, "windows": windows})


def of_stream(stream_id: str, window: str, **counts) -> dict:
    return dict(update(window, **counts), stream_id=stream_id)


def wait_for_last_window(server: Server, stream_id: str, window: str) -> None:
    wait_until(lambda: server.health()["streams"].get(stream_id, {}).get("last_window")
               == window, message=f"{stream_id} never had {window} as its last window")


def test_a_viewer_reconnecting_with_since_gets_each_missed_window_once_then_live_ones(server):
    stream = f"rec-{uuid.uuid4().hex[:8]}"
    w = two_second_windows(7)
    session = tokens.new_session()
    seen = [of_stream(stream, w[0], fire=1), of_stream(stream, w[1], fire=2),
            of_stream(stream, w[2], fire=3)]
    missed = [of_stream(stream, w[3], fire=4), of_stream(stream, w[3], fire=5),  # 2 versions
              of_stream(stream, w[4], laugh=6), of_stream(stream, w[5], clap=7)]
    with server.publisher() as publisher:
        with recovering_viewer(server, "tunnel", stream, None, session) as viewer:
            server.wait_for_counts(viewers=1, subscribers=1)
            for message in seen:
                publisher.send(text(message))
            assert [viewer.recv(timeout=5) for _ in seen] == [text(m) for m in seen]
        server.wait_for_counts(viewers=0, subscribers=1)
        for message in missed:  # while the viewer is away
            publisher.send(text(message))
        wait_for_last_window(server, stream, w[5])
        with recovering_viewer(server, "tunnel", stream, w[2], session) as viewer:
            # The latest version of each missed window, oldest first, after the verdict.
            assert [viewer.recv(timeout=5) for _ in range(4)] == [
                recovery(w[2], True, 3), text(missed[1]), text(missed[2]), text(missed[3])]
            assert_nothing_arrives(viewer)
            live = of_stream(stream, w[6], fire=8)
            publisher.send(text(live))
            assert viewer.recv(timeout=5) == text(live)
            assert_nothing_arrives(viewer)
    assert metric(server, 'emojistream_ws_recoveries_total{result="complete"}') == 1
    assert metric(server, 'emojistream_ws_recoveries_total{result="partial"}') == 0


def test_recovery_while_updates_stream_in_has_no_gap_and_no_duplicate(server):
    """The backlog and the broadcasts meet without a hole or a repeat, whatever the moment
    the viewer connects (updates are published all along, every 5 ms)."""
    stream = f"race-{uuid.uuid4().hex[:8]}"
    w = two_second_windows(120)
    published = [text(of_stream(stream, window, fire=i + 1)) for i, window in enumerate(w)]
    with server.publisher() as publisher, \
            recovering_viewer(server, "early", stream, None) as early:
        # The early viewer keeps the stream watched: updates go through the broadcaster.
        server.wait_for_counts(viewers=1, subscribers=1)
        for message in published[:10]:
            publisher.send(message)
        wait_for_last_window(server, stream, w[9])

        def publish_the_rest():
            for message in published[10:]:
                publisher.send(message)
                time.sleep(0.005)

        sender = threading.Thread(target=publish_the_rest)
        sender.start()
        time.sleep(0.2)  # some 40 windows in
        with recovering_viewer(server, "late", stream, w[4]) as late:
            first = json.loads(late.recv(timeout=5))
            assert first["type"] == "recovery" and first["complete"] is True
            got = [late.recv(timeout=5) for _ in range(len(published) - 5)]
            sender.join()
            assert got == published[5:]
            assert_nothing_arrives(late)
        assert 5 < first["windows"] < len(published) - 5  # it did join mid-stream
        assert [early.recv(timeout=5) for _ in published] == published


def test_a_since_older_than_the_bound_gets_what_the_server_holds_and_complete_false(
        start_server):
    server = start_server(RECOVERY_MAX_WINDOWS=3)
    stream = f"bound-{uuid.uuid4().hex[:8]}"
    w = two_second_windows(6)
    sent = [of_stream(stream, window, fire=i + 1) for i, window in enumerate(w)]
    with server.publisher() as publisher:
        server.wait_for_counts(viewers=0, subscribers=1)
        for message in sent:
            publisher.send(text(message))
        wait_for_last_window(server, stream, w[5])
    held = [text(m) for m in sent[3:]]
    expected = {w[0]: [recovery(w[0], False, 3), *held],      # w1 and w2 were forgotten
                w[1]: [recovery(w[1], False, 3), *held],      # w2 was forgotten
                w[2]: [recovery(w[2], True, 3), *held],       # all after w2 is held
                w[4]: [recovery(w[4], True, 1), held[2]],
                w[5]: [recovery(w[5], True, 0)],
                "2026-11-01T00:00:00Z": [recovery("2026-11-01T00:00:00Z", False, 3), *held]}
    for since, messages in expected.items():
        with recovering_viewer(server, "back", stream, since) as viewer:
            assert [viewer.recv(timeout=5) for _ in messages] == messages
            assert_nothing_arrives(viewer)
    # A stream this server has had no update of: it cannot know what was missed.
    with recovering_viewer(server, "back", "never-here", w[0]) as viewer:
        assert viewer.recv(timeout=5) == recovery(w[0], False, 0)
        assert_nothing_arrives(viewer)
    assert metric(server, 'emojistream_ws_recoveries_total{result="complete"}') == 3
    assert metric(server, 'emojistream_ws_recoveries_total{result="partial"}') == 4


def test_a_late_window_the_bound_leaves_out_makes_recovery_before_it_incomplete(start_server):
    server = start_server(RECOVERY_MAX_WINDOWS=3)
    stream = f"late-{uuid.uuid4().hex[:8]}"
    w = two_second_windows(7)
    sent = {i: of_stream(stream, w[i], fire=i + 1) for i in (0, 1, 2, 4, 5, 6)}
    late = of_stream(stream, w[3], fire=40)  # its first update, after w6's: older than all held
    with server.publisher() as publisher:
        server.wait_for_counts(viewers=0, subscribers=1)
        for message in [*sent.values(), late]:
            publisher.send(text(message))
        wait_until(lambda: metric(server, "emojistream_ws_updates_accepted_total") == 7)
    # The late one is not held (w4, w5, w6 are): a since before it cannot be complete.
    held = [text(sent[i]) for i in (4, 5, 6)]
    for since, complete in ((w[2], False), (w[3], True)):
        with recovering_viewer(server, "back", stream, since) as viewer:
            assert [viewer.recv(timeout=5) for _ in range(4)] == [recovery(since, complete, 3),
                                                                  *held]
            assert_nothing_arrives(viewer)


@pytest.mark.parametrize("since", ["yesterday", "", "2026-13-01T00:00:00Z", "1733400000"])
def test_a_malformed_since_is_refused_with_400_before_the_handshake(server, since):
    issued = token("confused")
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{server.url}/?token={quote(issued)}&since={quote(since)}", open_timeout=5)
    response = refused.value.response
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body) == {
        "error": "since must be a window_start as updates carry it (ISO-8601, e.g. "
                 "2026-12-05T08:42:26.000Z; URL-encoded), got " + repr(since)}
    server.wait_for_counts(viewers=0, subscribers=0)


# --- presence ---------------------------------------------------------------------------------

def presence_viewer(server: Server, client_id: str, stream_id: str, since: str | None = None):
    """A viewer as the page and the simulator connect: its updates carry "watching"."""
    issued = tokens.issue(TOKEN_SECRET, client_id, CLUSTER, 60, time.time(), stream_id=stream_id,
                          session=tokens.new_session())
    query = f"token={quote(issued)}" + (f"&since={quote(since)}" if since else "")
    return connect(f"{server.url}/?{query}", open_timeout=5)


def watching(message: dict, count: int) -> str:
    return text(dict(message, watching=count))


def test_every_update_carries_the_streams_live_viewers_on_this_server(server):
    stream = f"pres-{uuid.uuid4().hex[:8]}"
    w = two_second_windows(4)
    first, second, third = (of_stream(stream, w[i], fire=i + 1) for i in range(3))
    with server.publisher() as publisher, presence_viewer(server, "p1", stream) as p1, \
            recovering_viewer(server, "plain", stream, None) as plain, \
            stream_viewer(server, "other-stream", "elsewhere"):
        with presence_viewer(server, "p2", stream) as p2:
            server.wait_for_counts(viewers=4, subscribers=1)
            publisher.send(text(first))
            assert p1.recv(timeout=5) == watching(first, 3)
            assert p2.recv(timeout=5) == watching(first, 3)
            assert plain.recv(timeout=5) == text(first)  # it did not ask: unchanged
        server.wait_for_counts(viewers=3, subscribers=1)
        publisher.send(text(second))
        assert p1.recv(timeout=5) == watching(second, 2)
        assert plain.recv(timeout=5) == text(second)
        # A viewer connecting is counted in its snapshot's and its recovery's updates.
        with presence_viewer(server, "p3", stream) as p3:
            assert [p3.recv(timeout=5), p3.recv(timeout=5)] == [watching(first, 3),
                                                                 watching(second, 3)]
            with presence_viewer(server, "p4", stream, since=w[0]) as p4:
                assert [p4.recv(timeout=5), p4.recv(timeout=5)] == [
                    recovery(w[0], True, 1), watching(second, 4)]
                publisher.send(text(third))
                for viewer in (p1, p3, p4):
                    assert viewer.recv(timeout=5) == watching(third, 4)
                    assert_nothing_arrives(viewer)
                assert plain.recv(timeout=5) == text(third)


def moment(message: dict) -> str:
    return text(dict(message, moment=True))


def test_a_burst_window_is_marked_as_a_moment_and_its_neighbours_are_not(server):
    """MOMENT_FACTOR 3 over the median of the previous minute's windows (at least
    MOMENT_MIN_WINDOWS 5 of them): a window of 10 times the background is a moment, the windows
    around it are not (the burst raises nobody's median past 3 times the background)."""
    stream = f"mom-{uuid.uuid4().hex[:8]}"
    w = two_second_windows(10)
    background = [of_stream(stream, w[i], fire=10 + i % 2) for i in range(6)]  # median 10.5
    burst = [of_stream(stream, w[6], fire=30), of_stream(stream, w[6], fire=105)]  # 2 versions
    after = [of_stream(stream, w[7], fire=11), of_stream(stream, w[8], fire=32)]
    with server.publisher() as publisher, presence_viewer(server, "p", stream) as p, \
            recovering_viewer(server, "plain", stream, None) as plain:
        server.wait_for_counts(viewers=2, subscribers=1)
        expected = [text(m) for m in background] + [text(burst[0]), moment(burst[1])] + [
            text(m) for m in after]
        received, counted = [], []
        for message in background + burst + after:  # one at a time: no conflation
            publisher.send(text(message))
            received.append(plain.recv(timeout=5))
            counted.append(p.recv(timeout=5))
        # 30 is not above 3 x 10.5, 105 is; 11 and 32 after the burst are not above 3 x 11 (the
        # burst's window is one of the 7 or 8 before them).
        assert received == expected
        assert_nothing_arrives(plain)
        # "watching" comes after "moment".
        assert counted[7] == text(dict(burst[1], moment=True, watching=2))
    # A viewer recovering gets the marked version too.
    with recovering_viewer(server, "later", stream, w[5]) as viewer:
        assert [viewer.recv(timeout=5) for _ in range(4)] == [
            recovery(w[5], True, 3), moment(burst[1]), text(after[0]), text(after[1])]


def test_the_first_windows_of_a_stream_are_never_moments(server):
    """Fewer than MOMENT_MIN_WINDOWS (5) windows before it: no median to compare with."""
    stream = f"mom-{uuid.uuid4().hex[:8]}"
    w = two_second_windows(5)
    sent = [of_stream(stream, w[0], fire=1)] + [of_stream(stream, w[i], fire=1000 * i)
                                                for i in range(1, 5)]
    with server.publisher() as publisher, recovering_viewer(server, "v", stream, None) as viewer:
        server.wait_for_counts(viewers=1, subscribers=1)
        for message in sent:
            publisher.send(text(message))
        assert [viewer.recv(timeout=5) for _ in sent] == [text(m) for m in sent]


def test_a_presence_other_than_0_or_1_is_refused_with_400(server):
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{server.url}/?token={quote(token('x'))}&presence=yes", open_timeout=5)
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body) == {
        "error": "presence must be 0 or 1, got 'yes'"}


# --- limits -------------------------------------------------------------------------------------

def test_a_second_connection_of_the_same_session_replaces_the_first(server):
    """The viewer's own reconnect (or reload): the same session takes over at once."""
    message = update(unique_window(), fire=7)
    session = tokens.new_session()
    with server.viewer("twice", session) as first, server.publisher() as publisher:
        server.wait_for_counts(viewers=1, subscribers=1)
        with server.viewer("twice", session) as second:
            with pytest.raises(ConnectionClosed) as closed:
                first.recv(timeout=5)
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                4409, "replaced by a newer connection of this session")
            server.wait_for_counts(viewers=1, subscribers=1)
            publisher.send(text(message))
            assert second.recv(timeout=5) == text(message)
    assert "viewer 'twice' connected again from " in server.service.log()


def test_another_session_of_the_same_client_id_never_evicts_the_first(server):
    """A second party that registers the same client id gets a session of its own: it is
    served alongside, and the first viewer keeps receiving."""
    message = update(unique_window(), fire=3)
    with server.viewer("victim-1") as victim, server.publisher() as publisher:
        server.wait_for_counts(viewers=1, subscribers=1)
        with server.viewer("victim-1") as intruder:
            server.wait_for_counts(viewers=2, subscribers=1)
            publisher.send(text(message))
            assert victim.recv(timeout=5) == text(message)
            assert intruder.recv(timeout=5) == text(message)
        server.wait_for_counts(viewers=1, subscribers=1)
        publisher.send(text(update(unique_window(), clap=1)))
        assert json.loads(victim.recv(timeout=5))["aggregates"][0]["emoji_type"] == "👏"
    assert "connected again" not in server.service.log()


def test_tokens_without_a_session_replace_nobody(server):
    """Tokens issued before sessions existed (no "sid"): accepted, alongside each other."""
    old = tokens.issue(TOKEN_SECRET, "legacy", CLUSTER, 60, time.time())
    with server.viewer(token_text=old) as first, server.viewer(token_text=old) as second:
        server.wait_for_counts(viewers=2, subscribers=0)
        with server.publisher() as publisher:
            message = text(update(unique_window(), laugh=2))
            publisher.send(message)
            assert (first.recv(timeout=5), second.recv(timeout=5)) == (message, message)


def test_viewer_connections_per_address_are_capped(start_server):
    server = start_server(WS_MAX_CONNECTIONS_PER_ADDRESS=3)
    with server.viewer("one"), server.viewer("two"), server.viewer("three") as third:
        server.wait_for_counts(viewers=3, subscribers=0)
        with pytest.raises(InvalidStatus) as refused:
            server.viewer("four")
        response = refused.value.response
        assert response.status_code == 429
        assert response.body.decode() == ("too many connections from 127.0.0.1: at most 3 "
                                          "(WS_MAX_CONNECTIONS_PER_ADDRESS)\n")
        third.close()
        server.wait_for_counts(viewers=2, subscribers=0)
        with server.viewer("four"):
            server.wait_for_counts(viewers=3, subscribers=0)
        # Subscribers and health checks are not viewers: never capped.
        with server.publisher():
            server.wait_for_counts(viewers=2, subscribers=1)


def test_a_viewer_that_stops_reading_is_closed_once_its_unsent_data_passes_the_cap(
        start_server):
    # Without conflation, every version is written (a burst of one window would be conflated).
    server = start_server(WS_MAX_VIEWER_BUFFER_BYTES=64 * 1024, WS_CONFLATE="false")
    padding = "x" * 100_000  # extra fields travel with an update, unread by the server
    window = unique_window()
    updates = [dict(update(window, fire=n), padding=padding) for n in range(1, 81)]
    # A client whose queue holds one message stops reading the socket once it is full; one
    # with no limit reads everything as it comes.
    with connect(f"{server.url}/?token={quote(token('slow'))}&presence=0", open_timeout=5,
                 max_queue=1) as slow, \
            connect(f"{server.url}/?token={quote(token('fast'))}&presence=0", open_timeout=5,
                    max_queue=None) as fast, \
            server.publisher() as publisher:
        server.wait_for_counts(viewers=2, subscribers=1)
        counts = []  # one update at a time, as the fast viewer reads it: never behind itself
        for message in updates:
            publisher.send(text(message))
            counts.append(json.loads(fast.recv(timeout=10))["aggregates"][0]["count"])
        assert counts == list(range(1, 81))
        server.service.wait_for_log("closing a viewer from 127.0.0.1:")
        received = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                slow.recv(timeout=10)
                received += 1
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            4408, "too slow: more than 65536 bytes unsent")
        assert 0 < received < len(updates)
        server.wait_for_counts(viewers=1, subscribers=1)


# --- the process ------------------------------------------------------------------------------

def test_help_exits_0():
    result = run("ws_server.py", "--help", env=dict(os.environ))
    assert result.returncode == 0
    assert "--cluster" in result.stdout


def test_a_cluster_outside_the_configuration_is_a_usage_error(test_env):
    result = run("ws_server.py", "--cluster", "4", env=dict(test_env, CLUSTER_COUNT="3"))
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        "error: argument --cluster: must be between 1 and 3 (CLUSTER_COUNT), got 4")


def test_a_taken_port_is_a_one_line_error(server, test_env):
    result = run("ws_server.py", "--cluster", str(CLUSTER),
                 env=server_env(test_env, server.port, server.publish_port))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(f"ERROR   ws_server: port {server.port} on localhost or "
                             f"{server.publish_port} on 127.0.0.1 is already in use (is cluster "
                             f"{CLUSTER}'s server running already?)")


def test_sigterm_closes_connections_and_exits_0(server):
    with server.viewer() as viewer, server.publisher() as publisher:
        server.wait_for_counts(viewers=1, subscribers=1)
        publisher.send(text(update(unique_window(), fire=1)))
        viewer.recv(timeout=5)
        publisher.send("junk")
        assert server.service.stop() == 0
        with pytest.raises(ConnectionClosed) as closed:
            viewer.recv(timeout=5)
        assert closed.value.rcvd.code == 1001
    log = server.service.log()
    assert_clean_log(log)
    assert (f"INFO    ws_server: ready: cluster 2 serving viewers at ws://localhost:{server.port}/"
            f", subscribers at ws://127.0.0.1:{server.publish_port}/publish, health at /health"
            ) in log
    assert ("INFO    ws_server: stopped: 1 update(s) broadcast, 0 repeated, 0 stale and 1 "
            "invalid dropped, 0 of a stream nobody watched here, 0 viewer message(s) discarded, "
            "0 viewer(s) refused") in log
    assert "; open-file limit " in log


def test_sigint_exits_0_too(server):
    server.service.process.send_signal(signal.SIGINT)
    assert server.service.process.wait(timeout=10) == 0
