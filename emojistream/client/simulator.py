"""client_simulator.py CLIENT_ID: a simulated viewer that registers, watches its cluster's
window updates, and sends emojis.

It registers CLIENT_ID with the registration API as a viewer of one live stream (--stream ID;
default main), connects to the WebSocket endpoint it is given (which carries its token) and
prints each window update of that stream it receives as one line (stdout), while it sends random
emojis for that stream to the ingest API at --rate events per second (one per POST /emoji, or
--batch B per POST /emojis). After --duration seconds, or on Ctrl-C / SIGTERM, it closes its
connection and exits 0 (there is nothing to deregister: the registration API remembers nobody).

Reconnection. When the connection drops (its WebSocket server died, a network failure, no pong)
or the server refuses the token (close code 4401: missing, invalid or expired; 4403: issued for
another cluster), it registers again presenting its last token, which gets a fresh token for
the same session (the same cluster while it is healthy, else another), and reconnects.
Attempts are spaced by exponential backoff with jitter
(VIEWER_RETRY_INITIAL_S doubling up to VIEWER_RETRY_MAX_S, each varied by up to 30%), so that
thousands of viewers dropped together do not come back in one burst. The backoff starts again
from the beginning only after a connection that delivered an update or lasted STABLE_S. Another
party registering the same CLIENT_ID gets a session of its own and cannot close this one's
connection; only a connection of this same session (this process's token) replaces it (close
code 4409), and then it stops and exits 1.

Recovery. Each reconnection passes since=<the newest window_start received>: the new server
(the same cluster's or another's) first sends {"type": "recovery", ...} (logged, not shown) and
then the latest update of every window after it that it holds, so the printed windows have no
gap; --since WINDOW_START does the same for the first connection.

Log lines go to stderr, window updates to stdout; --quiet prints none, --print-json prints each
message as received, one JSON document per line. An update received again unchanged (after a
reconnection, the new server sends its stream's latest updates) is not shown twice.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from emojistream import topology
from emojistream.client.sender import Sender, wait_at_most
from emojistream.client.settings import ViewerSettings
from emojistream.client.viewer import RegistrationClient, RegistrationError
from emojistream.client.watcher import Display, Watcher, token_of, without_token
from emojistream.common.backoff import Backoff
from emojistream.common.events import InvalidEvent, parse_timestamp
from emojistream.common.lifecycle import load_settings
from emojistream.common.logs import setup_logging

log = logging.getLogger("client_simulator")


async def simulate(args: argparse.Namespace, settings: ViewerSettings) -> int:
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
             assignment.get("cluster_id"), without_token(assignment["subscriber_endpoint"]),
             assignment.get("stream_id"))
    display = Display("quiet" if args.quiet else "json" if args.print_json else "lines")
    watcher = Watcher(registration, args.client_id, display, settings, since=args.since)
    watcher.assignment = assignment  # the sender's token from the start
    watching = asyncio.create_task(watcher.run(assignment))
    sender = sending = None
    if args.rate > 0:
        sender = Sender(args.api_url, args.client_id, args.rate, args.batch,
                        settings.allowed_emojis, args.stream,
                        token=lambda: token_of(watcher.assignment),
                        renew_token=lambda: _renew_token(registration, watcher, args.client_id))
        sending = asyncio.create_task(sender.run(stop))
        log.info("sending %g emoji(s)/s to %s%s", args.rate, sender.api_url,
                 f" in batches of {args.batch}" if args.batch > 1 else "")
    failed = await _run_until(stop, watching, sending)
    _log_summary(display, sender)
    if sender is not None:
        sender.close()
    registration.close()
    return 1 if failed or watcher.replaced else 0


def _renew_token(registration: RegistrationClient, watcher: Watcher, client_id: str) -> None:
    """A fresh token for the sender (the ingest API refused the last one): registering again,
    which leaves the open WebSocket connection alone."""
    try:
        watcher.assignment = registration.register(client_id)
    except RegistrationError as err:
        log.warning("could not register again for a fresh token: %s", err)


async def _first_registration(registration: RegistrationClient, client_id: str,
                              stop: asyncio.Event, settings: ViewerSettings) -> dict | None:
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
        await wait_at_most(stop, delay)
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


def window_start(text: str) -> str:
    try:
        parse_timestamp(text)
    except InvalidEvent as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def parse_args(argv, settings: ViewerSettings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="client_simulator.py",
        description="A simulated viewer: registers CLIENT_ID, prints the window updates of its "
                    "stream (stdout), sends random emojis to the ingest API, and stops after "
                    "--duration, Ctrl-C or SIGTERM.")
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
    parser.add_argument("--registration-url", default=topology.registration_url(settings),
                        help="registration API (default from REGISTRATION_PUBLIC_URL, or "
                             "REGISTRATION_HOST and REGISTRATION_PORT: %(default)s)")
    parser.add_argument("--api-url", default=topology.api_url(settings),
                        help="ingest API (default from API_PUBLIC_URL, or API_HOST and "
                             "API_PORT: %(default)s)")
    parser.add_argument("--since", type=window_start, default=None, metavar="WINDOW_START",
                        help="recover from this window: the first connection gets the latest "
                             "update of every window after it (as far as its server holds), "
                             "e.g. 2026-12-05T08:42:26.000Z; reconnections always pass the "
                             "newest window received")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="print no window updates")
    output.add_argument("--print-json", action="store_true",
                        help="print each received message as one raw JSON line")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    setup_logging("client_simulator")
    settings = load_settings(log, ViewerSettings)
    args = parse_args(argv, settings)
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    return asyncio.run(simulate(args, settings))


if __name__ == "__main__":
    sys.exit(main())
