"""Process lifecycle shared by the long-running components."""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import threading

from emojistream import config


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


def add_cluster_option(parser: argparse.ArgumentParser, settings: config.Settings) -> None:
    """--cluster N, required, one of the configured clusters (1 to CLUSTER_COUNT)."""

    def cluster_number(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            number = None
        if number not in settings.clusters:
            raise argparse.ArgumentTypeError(
                f"must be between 1 and {settings.cluster_count} (CLUSTER_COUNT), got {text}")
        return number

    parser.add_argument("--cluster", type=cluster_number, required=True, metavar="N",
                        help=f"cluster number, 1 to {settings.cluster_count}")


def load_settings(log: logging.Logger) -> config.Settings:
    """The settings from the environment, or exit 2 naming the bad setting (not a traceback)."""
    try:
        return config.load()
    except config.ConfigError as err:
        log.error("%s", err)
        raise SystemExit(2) from None
