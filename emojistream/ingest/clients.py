"""Per-client limits of the ingest API (docs/operations.md#limits-and-how-to-change-them).

- Events per client address: a token bucket per address holding API_EVENTS_BURST_PER_ADDRESS
  events, refilled at API_EVENTS_PER_S_PER_ADDRESS (0: no limit). Every event a request carries
  costs one token, valid or not, before it is validated: a request it cannot pay for is answered
  429 with Retry-After and sends nothing. A batch larger than the burst could never be paid
  for: 413.
- With API_REQUIRE_TOKEN, POST /emoji and /emojis need ``Authorization: Bearer <token>``, the
  viewer token the registration API issued (any cluster's, not expired), or get 401. The events'
  user id is the token's client id, whatever the body says (it may leave user_id out), and the
  viewer's own bucket (API_EVENTS_BURST_PER_VIEWER, API_EVENTS_PER_S_PER_VIEWER) applies too.

Each API worker process keeps its own buckets: an address whose connections spread over the
API_WORKERS workers may send up to API_WORKERS times the rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from flask import request

from emojistream.common import tokens
from emojistream.common.closecodes import FORBIDDEN
from emojistream.common.json_api import ApiError
from emojistream.common.limits import RateLimiter
from emojistream.ingest.settings import IngestSettings

BEARER = "bearer "


class ClientLimits:
    """Who may send, and how many events; ApiError (401, 413, 429) when not."""

    def __init__(self, settings: IngestSettings, token_secret: str | None = None,
                 clock: Callable[[], float] = time.time):
        if settings.api_require_token and not token_secret:
            raise ValueError("API_REQUIRE_TOKEN needs the token secret")
        self.settings = settings
        self._secret = token_secret
        self._clock = clock
        self._per_address = (RateLimiter(settings.api_events_per_s_per_address,
                                         settings.api_events_burst_per_address)
                             if settings.api_events_per_s_per_address > 0 else None)
        self._per_viewer = RateLimiter(settings.api_events_per_s_per_viewer,
                                       settings.api_events_burst_per_viewer) \
            if settings.api_require_token and settings.api_events_per_s_per_viewer > 0 else None

    def viewer(self) -> str | None:
        """The client id of the request's viewer token when tokens are required (ApiError 401
        without a valid one), else None."""
        if not self.settings.api_require_token:
            return None
        assert self._secret is not None
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith(BEARER):
            raise _unauthorized("missing token: send Authorization: Bearer <the token "
                                "POST /register issued> (API_REQUIRE_TOKEN)")
        token = header[len(BEARER):].strip()
        now = self._clock()
        refusal = "invalid token"
        for cluster in self.settings.clusters:
            try:
                return tokens.verify(self._secret, token, cluster, now).client_id
            except tokens.TokenError as err:
                if err.code != FORBIDDEN:  # not genuine, or expired: so for every cluster
                    refusal = err.reason
                    break
        raise _unauthorized(refusal)

    def charge(self, events: int, viewer: str | None, address: str | None) -> None:
        """Take ``events`` tokens of the client ``address``'s bucket and the viewer's (when
        ``viewer``); ApiError 429 (413 for more than a burst) when either has too few."""
        address = address or "?"
        if self._per_address is not None:
            self._take(self._per_address, address, events, f"client address {address}",
                       "API_EVENTS_BURST_PER_ADDRESS", "API_EVENTS_PER_S_PER_ADDRESS")
        if viewer is not None and self._per_viewer is not None:
            self._take(self._per_viewer, viewer, events, f"viewer {viewer!r}",
                       "API_EVENTS_BURST_PER_VIEWER", "API_EVENTS_PER_S_PER_VIEWER")

    @staticmethod
    def _take(limiter: RateLimiter, key: str, events: int, who: str, burst_name: str,
              rate_name: str) -> None:
        wait_s = limiter.take(key, events)
        if wait_s is None:
            return
        limits = (f"at most {limiter.burst} events at once and {limiter.rate_per_s:g} a second "
                  f"({burst_name}, {rate_name})")
        if events > limiter.burst:
            raise ApiError(413, f"a request of {events} events is more than {who} may ever "
                                f"send at once: {limits}")
        raise ApiError(429, f"too many events from {who}: {limits}",
                       headers={"Retry-After": str(max(1, math.ceil(wait_s)))})


def _unauthorized(reason: str) -> ApiError:
    return ApiError(401, reason, headers={"WWW-Authenticate": 'Bearer realm="emoji"'})
