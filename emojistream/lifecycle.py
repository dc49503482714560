"""Process lifecycle shared by the long-running components."""

from __future__ import annotations

import logging
import resource
import signal
import threading

from . import config


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


def load_settings(log: logging.Logger) -> config.Settings:
    """The settings from the environment, or exit 2 naming the bad setting (not a traceback)."""
    try:
        return config.load()
    except config.ConfigError as err:
        log.error("%s", err)
        raise SystemExit(2) from None
