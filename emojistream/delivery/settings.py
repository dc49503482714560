"""The settings of the WebSocket servers and the subscribers (docs/operations.md#settings)."""

from __future__ import annotations

from dataclasses import dataclass

from emojistream.common.settings import ConfigError, SharedSettings

EVENT_LOOPS = ("asyncio", "uvloop")  # WS_EVENT_LOOP's values


@dataclass(frozen=True)
class DeliverySettings(SharedSettings):
    ws_close_timeout_s: float = 2.0
    ws_max_connections_per_address: int = 10_000
    ws_max_viewer_buffer_bytes: int = 1024 * 1024
    ws_dedup_windows: int = 64
    # The windows of each stream whose latest update a server keeps for viewers that reconnect
    # with since=<window_start> (150 two-second windows: 5 minutes; docs/delivery.md#recovery).
    recovery_max_windows: int = 150
    ws_broadcast_batch: int = 250
    ws_conflate: bool = True       # send only the latest queued version of a window when behind
    ws_compression: str = "none"   # "none" or "deflate" (permessage-deflate, per connection)
    ws_listen_backlog: int = 4096
    # The server's event loop: "asyncio" (the standard library's) or "uvloop" (libuv's; opt-in,
    # measured beside asyncio in docs/benchmarks.md).
    ws_event_loop: str = "asyncio"
    # How often a server asks the other clusters' servers for their viewers of each stream
    # (the "watching" of each update counts every server's; docs/delivery.md#presence).
    ws_presence_poll_s: float = 1.0
    # The viewers' listener over TLS (wss://): a PEM certificate chain and its key; empty: ws://
    # (TLS terminated in front of the server, if at all: docs/operations.md#tls-for-viewers).
    ws_tls_cert: str = ""
    ws_tls_key: str = ""
    subscriber_session_timeout_ms: int = 6000
    subscriber_heartbeat_ms: int = 1000
    subscriber_retry_max_s: float = 2.0

    def __post_init__(self):
        super().__post_init__()
        if self.recovery_max_windows < 1:
            raise ConfigError(f"RECOVERY_MAX_WINDOWS must be at least 1, got "
                              f"{self.recovery_max_windows}")
        if self.ws_event_loop not in EVENT_LOOPS:
            raise ConfigError(f"WS_EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}, got "
                              f"{self.ws_event_loop!r}")
        if bool(self.ws_tls_cert) != bool(self.ws_tls_key):
            raise ConfigError("WS_TLS_CERT and WS_TLS_KEY go together (the viewers' listener's "
                              "certificate chain and its private key, PEM files)")
