"""Publishers that never get their partition back: a bounded reproduction on a broker of its own.

Starts ``--relays`` relay processes at once (relay.Relay, as main_publisher.py and
cluster_publisher.py run it), each in a consumer group of its own on a 1-partition topic of its
own, ``--rounds`` times, and counts, ``--wait`` seconds after the start, the relays whose last
rebalance event was a revoke (no partition) and those that rebalanced after their first
assignment. With ``--old-order`` the consumers check their topics before subscribing, as they did
before kafka_clients.subscribe(), with GroupWatch on: the startup rebalance comes back, and the
count of "joining again" shows how often the watch rescued an abandoned one.

    .venv/bin/python -m bench.rebalance [--relays 20] [--rounds 5] [--wait 30] [--old-order]

Measured on the 2-core machine (20 relays a round): before the fix 7 of 240 stuck, 72 of 240
rebalanced; with it 0 of 100 stuck, 0 rebalanced; old order with the watch 0 of 100 stuck,
3 rescued by the watch within 5 s.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import REPO_ROOT, isolated_kafka

RELAY = r'''
import logging, sys, threading
from emojistream.common import kafka_clients
from emojistream.common.logs import setup_logging
from emojistream.common.settings import SharedSettings, load_from
from emojistream.relay.relay import Relay

i, wait_s, old_order = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "old"
setup_logging("rebalance")
settings = load_from(SharedSettings)
log = logging.getLogger(f"relay[{i}]")
stop = threading.Event()
threading.Timer(wait_s, stop.set).start()
source, target, group = f"rebalance-src-{i}", f"rebalance-dst-{i}", f"rebalance-{i}"
if old_order:
    consumer = kafka_clients.consumer(settings, group_id=group, enable_auto_commit=False,
                                      auto_offset_reset="earliest")
    kafka_clients.require_topics(settings, [source, target], consumer)
    listener = kafka_clients.ReadyLog(log, source, group, "old order")
    consumer.subscribe([source], listener=listener)
    watch = kafka_clients.GroupWatch(consumer, [source], listener, log)
    while not stop.is_set():
        consumer.poll(timeout_ms=200)
        watch.check()
    log.info("group at the end: %s", consumer.group_metadata())
    log.info("stopping: old order")
    consumer.close()
else:
    relay = Relay(settings, source, [target], group, log)
    try:
        relay.run(stop)
    finally:
        log.info("group at the end: %s", relay.consumer.group_metadata())
        relay.close()
'''


def create_topics(env: dict, count: int) -> None:
    """The relays' topics, and __consumer_offsets (a group joined once), as in a started stack."""
    subprocess.run([sys.executable, "-c", f'''
from kafka import KafkaConsumer
from kafka.admin import NewTopic
from emojistream.common import kafka_clients
from emojistream.common.settings import SharedSettings, load_from
settings = load_from(SharedSettings)
admin = kafka_clients.admin_client(settings)
admin.create_topics([NewTopic(f"rebalance-{{kind}}-{{i}}", 1, 1)
                     for i in range({count}) for kind in ("src", "dst")])
admin.close()
consumer = kafka_clients.consumer(settings, "rebalance-src-0", group_id="rebalance-warmup")
while not consumer.assignment():
    consumer.poll(200)
consumer.close()
'''], env=env, cwd=REPO_ROOT, check=True)


def outcome(log: str) -> tuple[bool, bool]:
    """(stuck, rebalanced) from a relay's log, before its stop."""
    events = re.findall(r"ready:|revoked", log.split("stopping:")[0])
    return (not events or events[-1] != "ready:"), "revoked" in events


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench.rebalance", description=__doc__.split("\n")[0])
    parser.add_argument("--relays", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--wait", type=float, default=30.0)
    parser.add_argument("--old-order", action="store_true")
    args = parser.parse_args(argv)
    stuck = rebalanced = rescued = 0
    with isolated_kafka() as (env, _), tempfile.TemporaryDirectory(prefix="rebalance-") as logs:
        env = dict(env, PYTHONPATH=str(REPO_ROOT))
        create_topics(env, args.relays * args.rounds)
        for round_ in range(args.rounds):
            relays = []
            for i in range(round_ * args.relays, (round_ + 1) * args.relays):
                path = Path(logs) / f"relay-{i}.log"
                with path.open("w") as out:
                    relays.append((path, subprocess.Popen(
                        [sys.executable, "-c", RELAY, str(i), str(args.wait),
                         "old" if args.old_order else "new"],
                        env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)))
            for _, process in relays:
                process.wait(timeout=args.wait + 120)
            texts = [path.read_text() for path, _ in relays]
            results = [outcome(text) for text in texts]
            round_stuck = sum(s for s, _ in results)
            stuck += round_stuck
            rebalanced += sum(r for _, r in results)
            rescued += sum(text.count("joining again") for text in texts)
            print(f"round {round_}: {round_stuck} of {args.relays} stuck", flush=True)
            for text, (is_stuck, _) in zip(texts, results, strict=True):
                if is_stuck:
                    print(text, flush=True)
    total = args.relays * args.rounds
    print(f"{stuck} of {total} relays without their partition {args.wait:.0f} s after start; "
          f"{rebalanced} rebalanced after their first assignment; {rescued} rejoin(s) by the "
          "watch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
