"""What the scripts do to the system, through this host's supervisord (supervise.py):

    python -m emojistream.ops.system up [--host HOST] [--kafka-only] [--spark-cluster]
    python -m emojistream.ops.system down [NAME...] [--kafka-only] [--spark-cluster]
    python -m emojistream.ops.system status [--json]
    python -m emojistream.ops.system start|stop|state NAME...   for kafka.sh, spark_cluster.sh

``up`` starts what does not run yet, in order (Kafka, the topics, the rest) and returns once
every component is ready; ``down`` stops them, the latest started first, and supervisord with
the last one. With TOPOLOGY_FILE, each host starts and stops its own share (``--host``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from emojistream.common.logs import setup_logging
from emojistream.common.settings import ConfigError, load_from
from emojistream.config import Settings
from emojistream.ops import status
from emojistream.ops.components import LOCAL, Component, components, deployment
from emojistream.ops.supervise import Supervisor, SupervisorError
from emojistream.ops.topics import BROKERS_TIMEOUT_S, TOPIC_ERRORS, ensure_topics

log = logging.getLogger("system")

READY_TIMEOUT_S = float(os.environ.get("READY_TIMEOUT", "180"))


def plan(host: str | None) -> tuple[Settings, str, list[Component]]:
    """This host's settings (the topology's addresses added), its name, and every component it
    may run (the standalone Spark cluster's daemons included), in start order."""
    settings = load_from(Settings)
    if not settings.topology_file:
        return settings, LOCAL, components(settings, spark_cluster=True)
    host = host or os.environ.get("EMOJISTREAM_HOST", "")
    for name, host_settings, placed in deployment(settings):
        if name == host:
            return host_settings, host, placed
    raise ConfigError(f"no host {host!r} in {settings.topology_file} (give --host NAME)")


def _chosen(every: list[Component], args: argparse.Namespace, topology: bool) -> list[Component]:
    if args.names:
        unknown = set(args.names) - {c.name for c in every}
        if unknown:
            raise ConfigError(f"no component {', '.join(sorted(unknown))} here (they are: "
                              f"{', '.join(c.name for c in every)})")
        return [c for c in every if c.name in args.names]
    if args.kafka_only:
        return [c for c in every if c.kind == "kafka"]
    if args.spark_cluster:
        return [c for c in every if c.kind in ("spark_master", "spark_worker")]
    # The standalone Spark cluster runs when asked (scripts/spark_cluster.sh) or placed.
    return [c for c in every if topology or c.kind not in ("spark_master", "spark_worker")]


def up(supervisor: Supervisor, chosen: list[Component]) -> None:
    """Start ``chosen``: the brokers first; then, where broker 1 runs, the topics (once every
    broker of the cluster is up); then the rest."""
    supervisor.ensure(chosen)
    brokers = [c for c in chosen if c.kind == "kafka"]
    supervisor.start(brokers, READY_TIMEOUT_S, say=log.info)
    if any(c.name in ("kafka", "kafka_1") for c in brokers):
        created = ensure_topics(supervisor.settings, log, BROKERS_TIMEOUT_S)
        log.info("topics created: %s", ", ".join(created) if created else "none (all exist)")
    supervisor.start([c for c in chosen if c.kind != "kafka"], READY_TIMEOUT_S, say=log.info)


def main(argv=None) -> int:
    setup_logging("system")
    parser = argparse.ArgumentParser(prog="python -m emojistream.ops.system",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down", "status", "start", "stop", "state"))
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these components")
    parser.add_argument("--host", help="this host's name in TOPOLOGY_FILE")
    parser.add_argument("--kafka-only", action="store_true", help="only the Kafka brokers")
    parser.add_argument("--spark-cluster", action="store_true",
                        help="only the standalone Spark cluster's master and workers")
    parser.add_argument("--json", action="store_true", help="status as JSON")
    args = parser.parse_args(argv)
    try:
        settings, host, every = plan(args.host)
        chosen = _chosen(every, args, bool(settings.topology_file))
    except ConfigError as err:
        log.error("%s", err)
        return 2
    supervisor = Supervisor(settings, every)
    if args.action in ("start", "stop", "state"):
        return _primitive(supervisor, args.action, chosen)
    try:
        if args.action == "up":
            up(supervisor, chosen)
            return 0
        if args.action == "down":
            if not supervisor.running():
                log.info("nothing runs here (no supervisord at %s)", supervisor.socket)
                return 0
            supervisor.stop(chosen)
            everything = not (args.names or args.kafka_only or args.spark_cluster)
            info = supervisor.info()
            if everything or all(info.get(c.name, {}).get("statename") in ("STOPPED", None)
                                 for c in every):
                supervisor.shutdown()
            return 0
    except (SupervisorError, *TOPIC_ERRORS) as err:
        log.error("%s", err)
        return 1
    narrowed = args.names or args.kafka_only or args.spark_cluster
    rows = status.rows(settings, host, chosen if narrowed else _shown(every, supervisor),
                       supervisor.info(), supervisor.dir / "crashes.json")
    print(json.dumps(rows, indent=2) if args.json else status.render(rows))
    return 0 if all(row["state"] == "up" for row in rows) else 1


def _primitive(supervisor: Supervisor, action: str, chosen: list[Component]) -> int:
    """For the shell scripts: start (without waiting) or stop these programs, or print each
    one's "NAME STATE PID" (STOPPED 0 when supervisord does not run)."""
    if action == "start":
        supervisor.ensure(chosen)
        for component in chosen:
            if supervisor.info()[component.name]["statename"] not in ("RUNNING", "STARTING"):
                supervisor.rpc().startProcess(component.name, False)
    elif action == "stop":
        supervisor.stop(chosen)
    info = supervisor.info()
    for component in chosen:
        process = info.get(component.name, {})
        print(component.name, process.get("statename", "STOPPED"), process.get("pid", 0))
    return 0


def _shown(every: list[Component], supervisor: Supervisor) -> list[Component]:
    """Status shows the components that run here, and the optional ones only when started."""
    info = supervisor.info()
    return [c for c in every if c.kind not in ("spark_master", "spark_worker")
            or info.get(c.name, {}).get("statename") not in (None, "STOPPED")]


if __name__ == "__main__":
    sys.exit(main())
