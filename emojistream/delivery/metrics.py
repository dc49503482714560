"""A WebSocket server's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from emojistream.common.metrics import new_registry, sample_value

DROP_REASONS = ("duplicate", "stale", "invalid")


class WsMetrics:
    """Viewers and subscribers, updates received and broadcast, viewers refused and dropped."""

    def __init__(self, hub, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else new_registry()
        r = self.registry
        Gauge("emojistream_ws_viewers", "Viewer connections open", registry=r).set_function(
            lambda: len(hub.viewers))
        Gauge("emojistream_ws_subscribers", "Subscriber connections open",
              registry=r).set_function(lambda: len(hub.subscribers))
        self.accepted = Counter("emojistream_ws_updates_accepted",
                                "New versions of a window's update received from subscribers",
                                registry=r)
        self.updates_dropped = Counter("emojistream_ws_updates_dropped",
                                       "Updates from subscribers not broadcast, by reason",
                                       ["reason"], registry=r)
        for reason in DROP_REASONS:
            self.updates_dropped.labels(reason)
        self.unwatched = Counter("emojistream_ws_updates_unwatched",
                                 "Accepted updates of a stream nobody here watches", registry=r)
        self.broadcasts = Counter("emojistream_ws_broadcasts",
                                  "Updates broadcast to a stream's viewers", registry=r)
        self.messages = Counter("emojistream_ws_messages_sent",
                                "Messages written to viewers by broadcasts", registry=r)
        self.conflated = Counter("emojistream_ws_updates_conflated",
                                 "Queued updates replaced by a newer version of their window "
                                 "before being broadcast (WS_CONFLATE)", registry=r)
        self.superseded = Counter("emojistream_ws_messages_superseded",
                                  "Messages a broadcast did not write because a newer version "
                                  "of its window was next (WS_CONFLATE)", registry=r)
        self.duration = Histogram("emojistream_ws_broadcast_duration_seconds",
                                  "Time one broadcast took (all its batches)", registry=r,
                                  buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                           0.25, 0.5, 1, 2.5))
        self.tokens_refused = Counter("emojistream_ws_tokens_refused",
                                      "Viewers refused for their token (4401, 4403)", registry=r)
        self.over_address_limit = Counter("emojistream_ws_viewers_over_address_limit",
                                          "Viewers refused: too many from their address (429)",
                                          registry=r)
        self.replaced = Counter("emojistream_ws_viewers_replaced",
                                "Viewer connections replaced by a newer one of the client (4409)",
                                registry=r)
        self.slow_dropped = Counter("emojistream_ws_slow_viewers_dropped",
                                    "Viewers closed for not reading (4408)", registry=r)
        self.recoveries = Counter("emojistream_ws_recoveries",
                                  "Viewers that connected with since=<window_start>, by whether "
                                  "the server held every window after it", ["result"],
                                  registry=r)
        for result in ("complete", "partial"):
            self.recoveries.labels(result)
        self.from_viewers = Counter("emojistream_ws_viewer_messages_discarded",
                                    "Messages viewers sent (never forwarded)", registry=r)

    def count(self, name: str, labels: dict | None = None) -> int:
        """The value of one of these counters (its name without emojistream_ws_ and _total)."""
        return int(sample_value(self.registry, f"emojistream_ws_{name}_total", labels))

    def summary(self) -> str:
        """What the server did, for its closing log line."""
        dropped = {reason: self.count("updates_dropped", {"reason": reason})
                   for reason in DROP_REASONS}
        return (f"{self.count('updates_accepted')} update(s) broadcast, "
                f"{dropped['duplicate']} repeated, {dropped['stale']} stale and "
                f"{dropped['invalid']} invalid dropped, {self.count('updates_unwatched')} of a "
                f"stream nobody watched here, {self.count('viewer_messages_discarded')} viewer "
                f"message(s) discarded, {self.count('tokens_refused')} viewer(s) refused, "
                f"{self.count('viewers_replaced')} replaced, "
                f"{self.count('viewers_over_address_limit')} over the limit of their address, "
                f"{self.count('slow_viewers_dropped')} too slow, "
                f"{self.count('updates_conflated')} update(s) conflated")
