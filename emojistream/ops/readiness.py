"""Whether a component is ready, from its table entry's ready check: an HTTP endpoint that
answers 200 (a metrics endpoint: with emojistream_ready 1), or a TCP port that accepts."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

TIMEOUT_S = 2.0
READY_SAMPLE = "emojistream_ready 1.0"


def is_ready(check: str) -> bool:
    if check.startswith("tcp://"):
        parts = urlsplit(check)
        try:
            with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT_S):
                return True
        except OSError:
            return False
    try:
        with urllib.request.urlopen(check, timeout=TIMEOUT_S) as answer:
            body = answer.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return not check.endswith("/metrics") or READY_SAMPLE in body.splitlines()
