"""Every setting of every component, as one object, and what the shell scripts read of them.

    python3 -m emojistream.config            every effective value (secrets shown as "(set)")
    python3 -m emojistream.config --shell    NAME=value lines for the scripts' eval

A component loads only its own class (``IngestSettings``, ...: emojistream/common/settings.py
says how); ``Settings`` is all of them, for the scripts, the tests and the benchmarks.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, fields

from emojistream import topology
from emojistream.aggregator.settings import AggregatorSettings
from emojistream.common.settings import (  # noqa: F401  (what callers use through config)
    REPO_ROOT,
    STREAM_ID,
    ConfigError,
    SharedSettings,
    env_name,
    load_from,
    to_environment,
)
from emojistream.delivery.settings import DeliverySettings
from emojistream.ingest.settings import IngestSettings
from emojistream.ops.settings import ScriptSettings
from emojistream.registration.settings import RegistrationSettings

# Settings whose values the listing does not show.
SECRET_SUFFIXES = ("PASSWORD", "SECRET", "SUBSCRIBER_KEY", "ADMIN_KEY")


@dataclass(frozen=True)
class Settings(IngestSettings, AggregatorSettings, DeliverySettings, RegistrationSettings,
               ScriptSettings):
    """Every setting of every component."""


def load(environ=None, **overrides) -> Settings:
    """All the settings, from the defaults, then the environment, then ``overrides``."""
    return load_from(Settings, environ, **overrides)


def as_shell(settings: Settings) -> str:
    """``NAME=value`` lines for ``eval`` in shell scripts, plus the derived topic lists."""
    lines = [f"{name}={shlex.quote(value)}" for name, value in to_environment(settings).items()]
    lines.append("CLUSTER_TOPICS=" + shlex.quote(
        " ".join(settings.cluster_topic(n) for n in settings.clusters)))
    lines.append("SUBSCRIBERS_TOPICS=" + shlex.quote(
        " ".join(settings.subscribers_topic(n) for n in settings.clusters)))
    lines.append("WEB_PAGE_URL=" + shlex.quote(topology.registration_url(settings) + "/"))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emojistream.config",
        description="Print the effective configuration (defaults overridden by the environment).")
    parser.add_argument("--shell", action="store_true",
                        help="print NAME=value lines for eval in a shell script")
    parser.add_argument("--topic-replication", type=int, metavar="BROKERS",
                        help="print the replicas and min.insync.replicas of a topic on a cluster "
                             "of BROKERS brokers (0 for the broker's default)")
    args = parser.parse_args(argv)
    try:
        settings = load()
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    if args.topic_replication is not None:
        replicas = topology.topic_replicas(settings, args.topic_replication)
        print(replicas, topology.topic_min_insync(settings, replicas) or 0)
    elif args.shell:
        print(as_shell(settings))
    else:
        for f in fields(settings):
            name, value = env_name(f), getattr(settings, f.name)
            if value and name.endswith(SECRET_SUFFIXES):
                value = "(set)"
            print(f"{name:<32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
