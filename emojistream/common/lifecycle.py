"""Process lifecycle and command line shared by the long-running components."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import signal
import threading

from emojistream.common.settings import ConfigError, S, SharedSettings, load_from


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so a component can finish its current step, hand over
    what it holds (flush, commit) and exit 0 instead of dying mid-way."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (one file descriptor per
    WebSocket connection); the resulting soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def load_settings(log: logging.Logger, cls: type[S]) -> S:
    """The component's settings from the environment, or exit 2 naming the bad setting (not a
    traceback)."""
    try:
        return load_from(cls)
    except ConfigError as err:
        log.error("%s", err)
        raise SystemExit(2) from None


def add_cluster_option(parser: argparse.ArgumentParser, settings: SharedSettings) -> None:
    """--cluster N, required, one of the configured clusters (1 to CLUSTER_COUNT)."""

    def cluster_number(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            number = 0
        if number not in settings.clusters:
            raise argparse.ArgumentTypeError(
                f"must be between 1 and {settings.cluster_count} (CLUSTER_COUNT), got {text}")
        return number

    parser.add_argument("--cluster", type=cluster_number, required=True, metavar="N",
                        help=f"cluster number, 1 to {settings.cluster_count}")


def server_settings(log: logging.Logger, cls: type[S], argv, prog: str, description: str,
                    **fields: str) -> S:
    """An HTTP server script's settings, its options (--help included) overriding them:
    ``fields`` maps each option (host, port, workers, threads) to the setting it overrides,
    e.g. host="api_host"."""
    settings = load_settings(log, cls)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    helps = {"host": "address to listen on", "port": "port to listen on",
             "workers": "worker processes", "threads": "threads of each worker"}
    for option, field in fields.items():
        default = getattr(settings, field)
        parser.add_argument(f"--{option}", dest=field, default=default, type=type(default),
                            metavar=option.upper(),
                            help=f"{helps[option]} (default {default}, {field.upper()})")
    args = parser.parse_args(argv)
    return dataclasses.replace(settings, **{field: getattr(args, field)
                                            for field in fields.values()})
