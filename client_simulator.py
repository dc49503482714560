"""A simulated viewer: registers, watches its cluster's window updates, and sends emojis.

It registers CLIENT_ID with the registration API as a viewer of one live stream (--stream ID;
default main), connects to the WebSocket endpoint it is given (which carries its token) and
prints each window update of that stream it receives as one line (stdout), while it sends random
emojis for that stream to the ingest API at --rate events per second (one per POST /emoji, or
--batch B per POST /emojis). After --duration seconds, or on Ctrl-C / SIGTERM, it deregisters
and exits 0.

Reconnection. When the connection drops (its WebSocket server died, a network failure, no pong)
or the server refuses the token (close code 4401: missing, invalid or expired; 4403: issued for
another cluster), it registers again, which gets a fresh token and, when its cluster's server
is down, another cluster, and reconnects. Attempts are spaced by exponential backoff with jitter
(VIEWER_RETRY_INITIAL_S doubling up to VIEWER_RETRY_MAX_S, each varied by up to 30%), so that
thousands of viewers dropped together do not come back in one burst. The backoff starts again
from the beginning only after a connection that delivered an update or lasted STABLE_S. When
another viewer with the same client id connects (close code 4409), it stops and exits 1: one
connection per client id.

Log lines go to stderr, window updates to stdout; --quiet prints none, --print-json prints each
message as received, one JSON document per line. An update received again unchanged (after a
reconnection, the new server sends its stream's latest updates) is not shown twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import sys
import time
from collections import deque
from datetime import UTC, datetime

import requests
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from emojistream import config
from emojistream.client.viewer import RegistrationClient, RegistrationError, format_window
from emojistream.common import closecodes
from emojistream.common.backoff import Backoff
from emojistream.common.events import InvalidEvent, decode_window_update, format_timestamp
from emojistream.common.lifecycle import load_settings
from emojistream.common.logs import setup_logging

log = logging.getLogger("client_simulator")

HTTP_TIMEOUT_S = (2.0, 5.0)  # connect, read
CONNECT_TIMEOUT_S = 10.0
# A repeated warning (ingest API down, 503s) is logged at most once per this interval.
WARNING_INTERVAL_S = 5.0
# How many windows are remembered to mark an update that replaces an earlier one.
REMEMBERED_WINDOWS = 64
# A connection that lasted this long (or delivered an update) resets the reconnect backoff.
STABLE_S = 5.0
# Close codes of a refused token: registering again gets a fresh one.
TOKEN_REFUSED = {closecodes.UNAUTHORIZED, closecodes.FORBIDDEN}


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
                 stream_id: str | None = None):
        self.api_url = api_url.rstrip("/")
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
            await _wait(stop, next_at - loop.time())

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
            answer = self._session.post(self.api_url + path, json=body, timeout=HTTP_TIMEOUT_S)
        except requests.RequestException as err:
            self._warnings.warn("unreachable", "ingest API %s is not reachable (%s)",
                                self.api_url, type(err).__name__)
            return
        if answer.status_code == 200:
            self.accepted += len(events) if self.batch == 1 else _accepted(answer)
        else:
            self._warnings.warn(f"status {answer.status_code}", "ingest API answered %d: %s",
                                answer.status_code, answer.text.strip()[:200])

    def close(self) -> None:
        self._session.close()


def _accepted(answer: requests.Response) -> int:
    try:
        return int(answer.json()["accepted"])
    except (ValueError, KeyError, TypeError):
        return 0


class Display:
    """Shows each received message on stdout: as a readable line, as raw JSON, or not at all."""

    def __init__(self, mode: str):
        self.mode = mode  # "lines", "json" or "quiet"
        self.received = 0
        self._windows: deque[str] = deque(maxlen=REMEMBERED_WINDOWS)
        self._recent: deque = deque(maxlen=REMEMBERED_WINDOWS)

    def show(self, message) -> None:
        self.received += 1
        log.debug("received message %d (%d characters)", self.received, len(message))
        if message in self._recent:
            # A server sends a connecting viewer its stream's latest updates, so after a
            # reconnection the viewer may get again an update it already showed.
            log.debug("skipped a repeat of an update already shown")
            return
        self._recent.append(message)
        if self.mode == "json":
            _print(_one_line(message))
            return
        try:
            update = decode_window_update(message)
        except InvalidEvent as err:
            log.warning("received a message that is not a window update (%s)", err)
            return
        window = update["window_start"]
        seen = window in self._windows
        if not seen:
            self._windows.append(window)
        if self.mode == "lines":
            _print(format_window(update, replaces_earlier=seen))


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait for ``event``, at most ``seconds``."""
    try:
        await asyncio.wait_for(event.wait(), max(0.0, seconds))
    except TimeoutError:
        pass


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
    """Keeps a WebSocket connection to the client's endpoint, registering again (fresh token,
    possibly another cluster) and reconnecting with backoff whenever it drops or is refused."""

    def __init__(self, registration: RegistrationClient, client_id: str, display: Display,
                 settings: config.Settings):
        self.registration = registration
        self.client_id = client_id
        self.display = display
        self.settings = settings
        self._backoff = Backoff(settings.viewer_retry_initial_s, settings.viewer_retry_max_s)
        self.cluster: str | None = None
        # Another connection with this client id took this one's place: it must not fight back.
        self.replaced = False

    async def run(self, assignment: dict) -> None:
        while True:
            if assignment is not None:
                self.cluster = assignment.get("cluster_id")
                reason, stable = await self._watch(assignment)
                if self.replaced:
                    log.error("%s; stopping (another viewer with client id %r watches now)",
                              reason, self.client_id)
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
        endpoint = assignment["subscriber_endpoint"]
        shown = _without_token(endpoint)
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
        log.info("registered again: %s%s", cluster,
                 f" (was {self.cluster})" if self.cluster and cluster != self.cluster else "")
        return assignment


def _closed(endpoint: str, code: int | None, reason: str | None) -> str:
    if code in TOKEN_REFUSED:
        return f"{endpoint} refused the token: {code} {reason}"
    if code is not None and code >= 4000:
        return f"{endpoint} closed the connection: {code} {reason}"
    if code is None:
        return f"{endpoint}: connection lost (no close frame)"
    return f"{endpoint} closed the connection (code {code})"


def _without_token(endpoint: str) -> str:
    """The endpoint for log lines: a token is a credential."""
    return endpoint.split("?", 1)[0]


async def simulate(args: argparse.Namespace, settings: config.Settings) -> int:
    stop = _stop_event(args.duration)
    registration = RegistrationClient(args.registration_url, args.stream)
    try:
        assignment = await _first_registration(registration, args.client_id, stop, settings)
    except RegistrationError as err:
        log.error("%s", err)
        return 1
    if assignment is None:  # stopped while waiting for a cluster
        registration.close()
        return 0
    log.info("registered %r: %s at %s, stream %s", args.client_id,
             assignment.get("cluster_id"), _without_token(assignment["subscriber_endpoint"]),
             assignment.get("stream_id"))
    display = Display("quiet" if args.quiet else "json" if args.print_json else "lines")
    watcher = Watcher(registration, args.client_id, display, settings)
    watching = asyncio.create_task(watcher.run(assignment))
    sender = sending = None
    if args.rate > 0:
        sender = Sender(args.api_url, args.client_id, args.rate, args.batch,
                        settings.allowed_emojis, args.stream)
        sending = asyncio.create_task(sender.run(stop))
        log.info("sending %g emoji(s)/s to %s%s", args.rate, sender.api_url,
                 f" in batches of {args.batch}" if args.batch > 1 else "")
    failed = await _run_until(stop, watching, sending)
    if not watcher.replaced:  # else the registration is the newer viewer's now
        await _deregister(registration, args.client_id)
    _log_summary(display, sender)
    if sender is not None:
        sender.close()
    registration.close()
    return 1 if failed or watcher.replaced else 0


async def _first_registration(registration: RegistrationClient, client_id: str,
                              stop: asyncio.Event, settings: config.Settings) -> dict | None:
    """The first assignment. While no cluster is available (503: every WebSocket server is
    down, or the system is starting) it tries again with backoff; None if stopped meanwhile.
    Any other refusal raises RegistrationError."""
    backoff = Backoff(settings.viewer_retry_initial_s, settings.viewer_retry_max_s)
    while True:
        try:
            return await asyncio.to_thread(registration.register, client_id)
        except RegistrationError as err:
            if err.status != 503:
                raise
            delay = backoff.next_delay()
            log.warning("%s; trying again in %.1f s", err, delay)
        await _wait(stop, delay)
        if stop.is_set():
            return None


def _stop_event(duration: float | None) -> asyncio.Event:
    """Set by SIGINT, SIGTERM or after ``duration`` seconds."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    return stop


async def _run_until(stop: asyncio.Event, watching: asyncio.Task,
                     sending: asyncio.Task | None) -> bool:
    """Run until ``stop`` is set (or a task fails), then cancel the watcher and let the sender
    finish its request; True if a task failed."""
    tasks = [task for task in (watching, sending) if task is not None]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    watching.cancel()
    results = await asyncio.gather(stopper, *tasks, return_exceptions=True)
    failures = [result for result in results if isinstance(result, Exception)]
    for failure in failures:
        log.error("stopping after an unexpected error", exc_info=failure)
    return bool(failures)


async def _deregister(registration: RegistrationClient, client_id: str) -> None:
    try:
        known = await asyncio.to_thread(registration.deregister, client_id)
    except RegistrationError as err:
        log.warning("could not deregister: %s", err)
        return
    log.info("deregistered %r%s", client_id, "" if known else " (it was not registered)")


def _log_summary(display: Display, sender: Sender | None) -> None:
    sent = f"; sent {sender.sent} emoji(s), {sender.accepted} accepted" if sender else ""
    log.info("received %d message(s)%s", display.received, sent)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def parse_args(argv, settings: config.Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="client_simulator.py",
        description="A simulated viewer: registers CLIENT_ID, prints the window updates of its "
                    "stream (stdout), sends random emojis to the ingest API, and deregisters "
                    "on exit (after --duration, Ctrl-C or SIGTERM).")
    parser.add_argument("client_id", metavar="CLIENT_ID", help="the viewer's id (and user_id)")
    parser.add_argument("--stream", metavar="ID", default=None,
                        help="the live stream to watch and react to (default: the API's "
                             "default stream, main); GET /streams on the registration API "
                             "lists them")
    parser.add_argument("--rate", type=non_negative_float, default=5.0,
                        help="emojis sent per second (default 5; 0 sends none)")
    parser.add_argument("--batch", type=positive_int, default=1,
                        help="emojis per request: 1 posts /emoji, more post /emojis arrays "
                             "(default 1)")
    parser.add_argument("--duration", type=non_negative_float, default=None, metavar="S",
                        help="stop after S seconds (default: run until stopped)")
    parser.add_argument("--registration-url", default=settings.registration_url(),
                        help="registration API (default from REGISTRATION_PUBLIC_URL, or "
                             "REGISTRATION_HOST and REGISTRATION_PORT: %(default)s)")
    parser.add_argument("--api-url", default=settings.api_url(),
                        help="ingest API (default from API_PUBLIC_URL, or API_HOST and "
                             "API_PORT: %(default)s)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="print no window updates")
    output.add_argument("--print-json", action="store_true",
                        help="print each received message as one raw JSON line")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    setup_logging("client_simulator")
    settings = load_settings(log)
    args = parse_args(argv, settings)
    sys.stdout.reconfigure(errors="backslashreplace")
    return asyncio.run(simulate(args, settings))


if __name__ == "__main__":
    sys.exit(main())
