"""The simulator's reactions: random emojis sent to the ingest API at a steady rate."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

import requests

from emojistream.common.events import format_timestamp

log = logging.getLogger("client_simulator")

HTTP_TIMEOUT_S = (2.0, 5.0)  # connect, read
# A repeated warning (ingest API down, 503s) is logged at most once per this interval.
WARNING_INTERVAL_S = 5.0


async def wait_at_most(event: asyncio.Event, seconds: float) -> None:
    """Wait for ``event``, at most ``seconds``."""
    try:
        await asyncio.wait_for(event.wait(), max(0.0, seconds))
    except TimeoutError:
        pass


class ThrottledWarnings:
    """Logs a warning at most once per interval per kind, counting the ones left out."""

    def __init__(self, interval_s: float = WARNING_INTERVAL_S):
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval_s) < self.interval_s:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += f" ({suppressed} more like it not logged)"
        self._last[kind] = now
        log.warning(message, *args)


class Sender:
    """Sends random emojis to the ingest API at a steady rate; failures are logged, never
    fatal."""

    def __init__(self, api_url: str, client_id: str, rate: float, batch: int, emojis,
                 stream_id: str | None = None, token: Callable[[], str | None] | None = None,
                 renew_token: Callable[[], None] | None = None):
        """``token`` gives the viewer's current token (sent as Authorization: Bearer, which
        an API with API_REQUIRE_TOKEN requires), or None while it has none; ``renew_token``
        gets a fresh one (registering again) when the API refuses the token (401: expired),
        and the request is sent once more with it."""
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._renew_token = renew_token
        self.client_id = client_id
        self.stream_id = stream_id
        self.interval_s = batch / rate
        self.batch = batch
        self.emojis = emojis
        self.sent = self.accepted = 0
        self._session = requests.Session()
        self._warnings = ThrottledWarnings()

    async def run(self, stop: asyncio.Event) -> None:
        """Send until ``stop`` is set; a request under way is finished, not abandoned."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not stop.is_set():
            await asyncio.to_thread(self._post, [self._event() for _ in range(self.batch)])
            next_at += self.interval_s
            if next_at < loop.time() - 1.0:  # far behind (slow API): carry on, do not burst
                next_at = loop.time()
            await wait_at_most(stop, next_at - loop.time())

    def _event(self) -> dict:
        event = {"user_id": self.client_id, "emoji_type": random.choice(self.emojis),
                 "timestamp": format_timestamp(datetime.now(UTC))}
        if self.stream_id is not None:
            event["stream_id"] = self.stream_id
        return event

    def _post(self, events: list[dict]) -> None:
        path, body = ("/emojis", events) if self.batch > 1 else ("/emoji", events[0])
        self.sent += len(events)
        try:
            answer = self._send(path, body)
            if answer.status_code == 401 and self._renew_token is not None:
                log.info("ingest API refused the token (%s); registering again for a fresh "
                         "one", answer.text.strip()[:100])
                self._renew_token()
                answer = self._send(path, body)
        except requests.RequestException as err:
            self._warnings.warn("unreachable", "ingest API %s is not reachable (%s)",
                                self.api_url, type(err).__name__)
            return
        if answer.status_code == 200:
            self.accepted += len(events) if self.batch == 1 else _accepted(answer)
        else:
            self._warnings.warn(f"status {answer.status_code}", "ingest API answered %d: %s",
                                answer.status_code, answer.text.strip()[:200])

    def _send(self, path: str, body) -> requests.Response:
        token = self._token() if self._token is not None else None
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return self._session.post(self.api_url + path, json=body, headers=headers,
                                  timeout=HTTP_TIMEOUT_S)

    def close(self) -> None:
        self._session.close()


def _accepted(answer: requests.Response) -> int:
    try:
        return int(answer.json()["accepted"])
    except (ValueError, KeyError, TypeError):
        return 0
