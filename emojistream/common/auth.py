"""The one check of a shared key presented as ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hmac


def bearer_matches(authorization: str | None, key: str) -> bool:
    """Whether an Authorization header presents ``key`` as a Bearer token (compared in constant
    time)."""
    scheme, _, presented = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode("utf-8"), key.encode("utf-8"))
