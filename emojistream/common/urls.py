"""Host names and ports in addresses and URLs, written one way everywhere.

A server that listens on a wildcard address (0.0.0.0, ::) is reached at localhost on this
machine, and an IPv6 address goes in brackets before its port.
"""

from __future__ import annotations

from urllib.parse import urlsplit

WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
# Names of this machine that a browser on it may use for a server listening on one of them.
LOCAL_HOSTS = (*WILDCARD_HOSTS, "localhost", "127.0.0.1")


def reachable(host: str) -> str:
    """The host to connect to for a server listening on ``host``."""
    return "localhost" if host in WILDCARD_HOSTS else host


def bracketed(host: str) -> str:
    """``host`` as it goes before ":port": an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def host_port(host: str, port: int) -> str:
    return f"{bracketed(host)}:{port}"


def http_url(host: str, port: int) -> str:
    """http://host:port of a server listening on ``host``."""
    return f"http://{host_port(reachable(host), port)}"


def ws_url(host: str, port: int, path: str = "/") -> str:
    """ws://host:port/path of a WebSocket server listening on ``host``."""
    return f"ws://{host_port(reachable(host), port)}{path}"


def origin(url: str) -> str:
    """The web origin (scheme://host[:port]) of a URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()
