"""A viewer for tests and benchmarks that keeps every update it receives."""

from __future__ import annotations

import json
import threading

from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from emojistream.client.viewer import RegistrationClient, RegistrationError


class RecordingViewer:
    """A viewer in a thread of its own, for tests and benchmarks: registers, keeps every update
    it receives, and registers again (presenting its token: the same session) and reconnects
    whenever its connection ends (as real viewers do) until closed."""

    RETRY_S = 0.3

    def __init__(self, registration_url: str, client_id: str, keepalive: dict | None = None,
                 stream_id: str | None = None):
        """``keepalive``: websockets' ping_interval and ping_timeout (its defaults notice a
        lost server after 40 s); ``stream_id``: the stream it watches (default: the API's)."""
        self.client_id = client_id
        self.messages: list[dict] = []
        self.connections = 0
        self.cluster: str | None = None
        self.clusters: list[str | None] = []  # every cluster it was connected to, in order
        self._keepalive = keepalive or {}
        self._registration = RegistrationClient(registration_url, stream_id)
        self._socket = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                assignment = self._registration.register(self.client_id)
                with connect(assignment["subscriber_endpoint"], open_timeout=5,
                             **self._keepalive) as socket:
                    self._socket, self.cluster = socket, assignment.get("cluster_id")
                    self.clusters.append(self.cluster)
                    self.connections += 1
                    for text in socket:
                        self.messages.append(json.loads(text))
            except (OSError, ValueError, RegistrationError, WebSocketException):
                pass
            finally:
                self._socket = None
            self._stop.wait(self.RETRY_S)

    @property
    def connected(self) -> bool:
        return self._socket is not None

    def last_updates(self) -> dict[str, dict]:
        """window_start -> the last update received for that window (messages with a "type"
        are not updates)."""
        return {message["window_start"]: message for message in self.messages
                if "window_start" in message}

    def last_counts(self) -> dict[str, dict[str, int]]:
        """window_start -> {emoji: count} of the last update received for that window."""
        return {message["window_start"]: {a["emoji_type"]: a["count"]
                                          for a in message["aggregates"]}
                for message in self.messages}

    def close(self) -> None:
        """Stop (there is nothing to deregister)."""
        self._stop.set()
        socket = self._socket
        if socket is not None:
            socket.close()
        self._thread.join(timeout=10)
        self._registration.close()
