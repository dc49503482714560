"""The simulator's viewing: one WebSocket connection kept up, each update shown once."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from urllib.parse import parse_qs, quote, urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from emojistream.client.settings import ViewerSettings
from emojistream.client.viewer import RegistrationClient, RegistrationError, format_window
from emojistream.common import closecodes
from emojistream.common.backoff import Backoff
from emojistream.common.events import InvalidEvent, decode_window_update, parse_timestamp

log = logging.getLogger("client_simulator")

CONNECT_TIMEOUT_S = 10.0
# How many windows are remembered to mark an update that replaces an earlier one.
REMEMBERED_WINDOWS = 64
# A connection that lasted this long (or delivered an update) resets the reconnect backoff.
STABLE_S = 5.0
# Close codes of a refused token: registering again gets a fresh one.
TOKEN_REFUSED = {closecodes.UNAUTHORIZED, closecodes.FORBIDDEN}


class Display:
    """Shows each received message on stdout: as a readable line, as raw JSON, or not at all."""

    def __init__(self, mode: str):
        self.mode = mode  # "lines", "json" or "quiet"
        self.received = 0
        self._windows: deque[str] = deque(maxlen=REMEMBERED_WINDOWS)
        self._recent: deque = deque(maxlen=REMEMBERED_WINDOWS)
        # The newest window start received (what a reconnection passes as since), and when.
        self.newest: str | None = None
        self._newest_at: float | None = None

    def show(self, message) -> None:
        self.received += 1
        log.debug("received message %d (%d characters)", self.received, len(message))
        if message in self._recent:
            # A server sends a connecting viewer its stream's latest updates, so after a
            # reconnection the viewer may get again an update it already showed.
            log.debug("skipped a repeat of an update already shown")
            return
        self._recent.append(message)
        if _control(message):
            if self.mode == "json":
                _print(_one_line(message))
            return
        try:
            update = decode_window_update(message)
        except InvalidEvent as err:
            log.warning("received a message that is not a window update (%s)", err)
            return
        window = update["window_start"]
        self._note_newest(window)
        if self.mode == "json":
            _print(_one_line(message))
            return
        seen = window in self._windows
        if not seen:
            self._windows.append(window)
        if self.mode == "lines":
            _print(format_window(update, replaces_earlier=seen))


    def _note_newest(self, window: str) -> None:
        try:
            start = parse_timestamp(window).timestamp()
        except InvalidEvent:
            return
        if self._newest_at is None or start > self._newest_at:
            self.newest, self._newest_at = window, start


def _control(message) -> bool:
    """Whether a message is not a window update but a message of the server's (it has a
    "type": "recovery" comes first after connecting with since); logged, never shown as an
    update. Types this client does not know are skipped the same way."""
    try:
        parsed = json.loads(message)
    except ValueError:
        return False
    if not isinstance(parsed, dict) or "type" not in parsed:
        return False
    if parsed["type"] == "recovery":
        log.info("recovery after %s: %s window(s), %s", parsed.get("since"),
                 parsed.get("windows"), "complete" if parsed.get("complete") is True else
                 "incomplete (the server no longer or never held some windows after it)")
    else:
        log.debug("skipped a message of unknown type %r", parsed["type"])
    return True


def _one_line(message) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    if "\n" not in text:
        return text
    try:
        return json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        return text.replace("\n", " ")


def _print(line: str) -> None:
    print(line, flush=True)


class Watcher:
    """Keeps a WebSocket connection to the client's endpoint, registering again (presenting its
    token: a fresh one for the same session, possibly on another cluster) and reconnecting with
    backoff whenever it drops or is refused."""

    def __init__(self, registration: RegistrationClient, client_id: str, display: Display,
                 settings: ViewerSettings, since: str | None = None):
        self.registration = registration
        self.client_id = client_id
        self.display = display
        self.settings = settings
        self._backoff = Backoff(settings.viewer_retry_initial_s, settings.viewer_retry_max_s)
        self.since = since  # the first connection's since (--since); then the newest seen
        self.cluster: str | None = None
        self.assignment: dict | None = None  # the latest registration's answer
        # Another connection of this session (this viewer's token) took this one's place: it
        # must not fight back.
        self.replaced = False

    async def run(self, assignment: dict | None) -> None:
        while True:
            if assignment is not None:
                self.assignment = assignment
                self.cluster = assignment.get("cluster_id")
                reason, stable = await self._watch(assignment)
                if self.replaced:
                    log.error("%s; stopping (another connection of this viewer's session, "
                              "client id %r, watches now)", reason, self.client_id)
                    return
                if stable:
                    self._backoff.reset()
            else:
                reason = "registration failed"
            delay = self._backoff.next_delay()
            log.warning("not connected (%s); registering again and reconnecting in %.1f s "
                        "(attempt %d)", reason, delay, self._backoff.attempts)
            await asyncio.sleep(delay)
            assignment = await self._register_again()

    async def _watch(self, assignment: dict) -> tuple[str, bool]:
        """Receive until the connection ends: why it ended, and whether it was stable (it
        delivered an update or lasted STABLE_S)."""
        since = self.display.newest or self.since
        endpoint = with_since(assignment["subscriber_endpoint"], since)
        shown = without_token(endpoint)
        received = self.display.received
        loop = asyncio.get_running_loop()
        opened_at = None
        try:
            async with connect(endpoint, open_timeout=CONNECT_TIMEOUT_S,
                               **self.settings.ws_keepalive()) as connection:
                opened_at = loop.time()
                log.info("connected to %s (%s)", shown, assignment.get("cluster_id"))
                try:
                    async for message in connection:
                        self.display.show(message)
                except asyncio.CancelledError:
                    await connection.close()  # a normal closure (1000) when the viewer stops
                    raise
            code, reason = connection.close_code, _closed(shown, connection.close_code,
                                                          connection.close_reason)
        except ConnectionClosed as err:
            code = err.rcvd.code if err.rcvd else None
            reason = _closed(shown, code, err.rcvd.reason if err.rcvd else "")
        except (OSError, WebSocketException, TimeoutError) as err:
            code, reason = None, f"{shown}: {str(err) or type(err).__name__}"
        self.replaced = code == closecodes.REPLACED
        stable = self.display.received > received or (
            opened_at is not None and loop.time() - opened_at >= STABLE_S)
        return reason, stable

    async def _register_again(self) -> dict | None:
        try:
            assignment = await asyncio.to_thread(self.registration.register, self.client_id)
        except RegistrationError as err:
            log.warning("could not register again: %s", err)
            return None
        cluster = assignment.get("cluster_id")
        log.info("registered again: %s%s, %s session", cluster,
                 f" (was {self.cluster})" if self.cluster and cluster != self.cluster else "",
                 "same" if assignment.get("session") == "resumed" else "new")
        return assignment


def _closed(endpoint: str, code: int | None, reason: str | None) -> str:
    if code in TOKEN_REFUSED:
        return f"{endpoint} refused the token: {code} {reason}"
    if code is not None and code >= 4000:
        return f"{endpoint} closed the connection: {code} {reason}"
    if code is None:
        return f"{endpoint}: connection lost (no close frame)"
    return f"{endpoint} closed the connection (code {code})"


def token_of(assignment: dict | None) -> str | None:
    """The viewer token of a registration's answer (in its endpoint's query), or None."""
    if assignment is None or not isinstance(assignment.get("subscriber_endpoint"), str):
        return None
    values = parse_qs(urlsplit(assignment["subscriber_endpoint"]).query).get("token")
    return values[0] if values else None


def with_since(endpoint: str, since: str | None) -> str:
    """The endpoint asking for recovery after window ``since`` (none: the snapshot)."""
    if since is None:
        return endpoint
    return f"{endpoint}{'&' if '?' in endpoint else '?'}since={quote(since, safe='')}"


def without_token(endpoint: str) -> str:
    """The endpoint for log lines: a token is a credential."""
    return endpoint.split("?", 1)[0]
