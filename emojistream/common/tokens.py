"""Viewer tokens: what admits a viewer to one cluster's WebSocket server, for a while, as one
viewing session.

The format, the secret and the close codes of a refused token: docs/delivery.md#tokens. A token
carries a random session id ("sid", ``new_session``) that only its holder knows: a WebSocket
server lets a new connection replace a client id's live one only when both present the same
session (docs/delivery.md#viewer-identity-sessions). Pure functions: the caller passes the time
and the session. A rejected token is a TokenError carrying the close code and reason the server
sends.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from typing import NamedTuple

from emojistream.common.closecodes import FORBIDDEN, UNAUTHORIZED
from emojistream.common.events import DEFAULT_STREAM

# Longer strings are not tokens this module issued (a 64-character client id gives ~260).
MAX_TOKEN_LENGTH = 1024
# Random bytes of a session id: 128 bits, 22 base64url characters.
SESSION_BYTES = 16


class TokenError(ValueError):
    """A token that admits nobody: the close code and reason to send."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


def missing() -> TokenError:
    return TokenError(UNAUTHORIZED, "missing token")


def _invalid() -> TokenError:
    return TokenError(UNAUTHORIZED, "invalid token")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text or len(text) % 4 == 1 or not text.isascii():
        raise _invalid()
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _invalid() from None


def _key(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not key:
        raise ValueError("the token secret must not be empty")
    return key


def _signature(key: bytes, payload_b64: str) -> bytes:
    return hmac.new(key, payload_b64.encode("ascii"), hashlib.sha256).digest()


class Admission(NamedTuple):
    """Who a valid token admits, to which stream's updates, in which session (None for a token
    issued before sessions existed: such a connection replaces none and is replaced by none)."""

    client_id: str
    stream_id: str
    session: str | None = None


class Claims(NamedTuple):
    """What a genuine token says."""

    client_id: str
    cluster: int
    stream_id: str
    session: str | None
    expires: int


def new_session() -> str:
    """A fresh random session id (base64url, 22 characters)."""
    return _b64encode(os.urandom(SESSION_BYTES))


def issue(secret: str | bytes, client_id: str, cluster: int, ttl_s: float, now: float,
          stream_id: str = DEFAULT_STREAM, session: str | None = None) -> str:
    """A token admitting ``client_id`` to ``cluster`` for ``stream_id``'s updates until
    ``now + ttl_s`` (epoch seconds, rounded down to a whole second), in ``session`` (the
    registration API passes one: a new one, or the one the viewer presented)."""
    fields: dict = {"sub": client_id, "cl": cluster, "exp": int(now + ttl_s), "st": stream_id}
    if session is not None:
        fields["sid"] = session
    payload = json.dumps(fields, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    payload_b64 = _b64encode(payload.encode("utf-8"))
    return f"{payload_b64}.{_b64encode(_signature(_key(secret), payload_b64))}"


def verify(secret: str | bytes, token: str | None, cluster: int, now: float) -> Admission:
    """Who a token valid for ``cluster`` at ``now`` admits (a token without a stream is for
    "main"); TokenError otherwise. The signature is checked first: only a genuine token is told
    it expired or is for elsewhere."""
    claims = read(secret, token, now)
    if claims.cluster != cluster:
        raise TokenError(FORBIDDEN, f"token is for cluster {claims.cluster}, this is cluster "
                                    f"{cluster}")
    return Admission(claims.client_id, claims.stream_id, claims.session)


def read(secret: str | bytes, token: str | None, now: float) -> Claims:
    """What a genuine token that has not expired at ``now`` says, whatever its cluster;
    TokenError otherwise (the registration API reads the token a viewer presents again)."""
    key = _key(secret)
    if not token:
        raise missing()
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        raise _invalid()
    payload_b64, signature_b64 = token.split(".")
    if not payload_b64.isascii():
        raise _invalid()
    expected = _b64encode(_signature(key, payload_b64))
    if not hmac.compare_digest(signature_b64.encode("utf-8"), expected.encode("ascii")):
        raise _invalid()
    try:
        payload = json.loads(_b64decode(payload_b64))
    except (ValueError, UnicodeDecodeError):
        raise _invalid() from None
    if not (isinstance(payload, dict) and isinstance(payload.get("sub"), str)
            and _is_int(payload.get("cl")) and _is_int(payload.get("exp"))
            and isinstance(payload.get("st", DEFAULT_STREAM), str)
            and isinstance(payload.get("sid", ""), str)):
        raise _invalid()
    if now >= payload["exp"]:
        raise TokenError(UNAUTHORIZED, "token expired")
    return Claims(payload["sub"], payload["cl"], payload.get("st", DEFAULT_STREAM),
                  payload.get("sid") or None, payload["exp"])


def _is_int(value) -> bool:
    return type(value) is int
