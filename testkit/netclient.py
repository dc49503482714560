"""The client host of tests/test_multihost.py, run in its namespace: viewers that register at
the registration hosts and keep every update they receive, and a sender that posts reactions to
the ingest hosts and keeps those answered 200. Every second it writes what it has to a JSON file;
it stops when the control file says "stop", and only sends to the ingest URLs the control file
does not name as paused ("pause URL" lines).

    python -m testkit.netclient --registration URL,URL --api URL,URL --viewers N
                                --rate R --control FILE --out FILE
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import requests

from emojistream.common.events import format_timestamp
from testkit.viewer import RecordingViewer

EMOJIS = ("🔥", "😂", "👏", "🎉")
KEEPALIVE = {"ping_interval": 1.0, "ping_timeout": 2.0}
LIMIT_S = 900  # a bounded run, whatever the test does


def control(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def send_forever(apis: list[str], rate: float, control_file: Path, accepted: list,
                 refused: list, stop: threading.Event) -> None:
    """Batches of 10 events at ``rate`` events/s, to the ingest hosts in turn (the paused ones
    left out); the events answered 200 in ``accepted``."""
    session, sequence = requests.Session(), itertools.count()
    for api in itertools.cycle(apis):
        if stop.wait(10 / rate):
            return
        if f"pause {api}" in control(control_file):
            continue
        now = format_timestamp(datetime.now(UTC))
        events = [{"user_id": f"u{next(sequence)}", "emoji_type": random.choice(EMOJIS),
                   "timestamp": now} for _ in range(10)]
        try:
            answer = session.post(f"{api}/emojis", json=events, timeout=5)
        except requests.RequestException as err:
            refused.append(f"{api}: {type(err).__name__}")
            continue
        if answer.status_code == 200 and answer.json()["accepted"] == len(events):
            accepted.extend(events)
        else:
            refused.append(f"{api}: {answer.status_code}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registration", required=True)
    parser.add_argument("--api", required=True)
    parser.add_argument("--viewers", type=int, default=6)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    registrations = args.registration.split(",")
    viewers = [RecordingViewer(registrations[n % len(registrations)], f"netviewer-{n}",
                               KEEPALIVE) for n in range(args.viewers)]
    accepted: list[dict] = []
    refused: list[str] = []
    stop = threading.Event()
    sender = threading.Thread(target=send_forever, args=(args.api.split(","), args.rate,
                                                          args.control, accepted, refused, stop),
                              daemon=True)
    sender.start()
    deadline = time.monotonic() + LIMIT_S
    while True:
        done = "stop" in control(args.control) or time.monotonic() > deadline
        if done:
            stop.set()
            sender.join(timeout=10)
        state = {"accepted": list(accepted), "refused": list(refused),
                 "viewers": {v.client_id: {"clusters": list(v.clusters),
                                           "connected": v.connected,
                                           "messages": list(v.messages)} for v in viewers}}
        temporary = args.out.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, ensure_ascii=False))
        os.replace(temporary, args.out)
        if done:
            for viewer in viewers:
                viewer.close()
            return 0
        time.sleep(1)


if __name__ == "__main__":
    raise SystemExit(main())
