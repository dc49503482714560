"""emojistream/common/tokens.py: issuing and checking viewer tokens (pure functions, no
processes)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from emojistream.common import tokens
from emojistream.common.tokens import TokenError, issue, verify

SECRET = "test-token-secret"
NOW = 1_800_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload: dict | bytes, secret: str = SECRET) -> str:
    """A token over an arbitrary payload, signed correctly."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    payload_b64 = b64(raw)
    signature = hmac.new(secret.encode(), payload_b64.encode(), hashlib.sha256).digest()
    return f"{payload_b64}.{b64(signature)}"


def refused(token, cluster=2, now=NOW, secret=SECRET) -> tuple[int, str]:
    with pytest.raises(TokenError) as error:
        verify(secret, token, cluster, now)
    return error.value.code, error.value.reason


def test_a_token_admits_its_client_to_its_cluster_until_it_expires():
    token = issue(SECRET, "client_1", 2, 3600, NOW)
    assert verify(SECRET, token, 2, NOW).client_id == "client_1"
    assert verify(SECRET, token, 2, NOW + 3599).client_id == "client_1"
    assert refused(token, now=NOW + 3600) == (4401, "token expired")


def test_the_format_is_payload_dot_hmac_sha256_in_base64url():
    token = issue(SECRET, "client_1", 3, 60, NOW)
    payload_b64, signature_b64 = token.split(".")
    padded = payload_b64 + "=" * (-len(payload_b64) % 4)
    assert json.loads(base64.urlsafe_b64decode(padded)) == {
        "sub": "client_1", "cl": 3, "exp": int(NOW) + 60, "st": "main"}
    expected = hmac.new(SECRET.encode(), payload_b64.encode(), hashlib.sha256).digest()
    assert signature_b64 == b64(expected)
    assert "=" not in token and "+" not in token and "/" not in token


def test_any_client_id_round_trips():
    client_id = "ana maría/ü?&=#🔥"
    assert verify(SECRET, issue(SECRET, client_id, 1, 60, NOW), 1, NOW) == (client_id, "main",
                                                                          None)


def test_a_token_for_another_cluster_is_forbidden():
    token = issue(SECRET, "client_1", 1, 3600, NOW)
    assert refused(token, cluster=3) == (4403, "token is for cluster 1, this is cluster 3")


def test_a_token_issued_with_a_ttl_in_the_past_is_expired():
    assert refused(issue(SECRET, "late", 2, -10, NOW)) == (4401, "token expired")


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_is_missing(token):
    assert refused(token) == (4401, "missing token")


def test_another_secret_makes_an_invalid_token():
    assert refused(issue("another-secret", "client_1", 2, 3600, NOW)) == (4401, "invalid token")


def test_an_altered_payload_is_invalid():
    genuine = issue(SECRET, "client_1", 1, 3600, NOW)
    _, signature = genuine.split(".")
    # Same signature, payload moved to cluster 2 and to another client.
    for payload in ({"sub": "client_1", "cl": 2, "exp": int(NOW) + 3600},
                    {"sub": "someone_else", "cl": 1, "exp": int(NOW) + 3600},
                    {"sub": "client_1", "cl": 1, "exp": int(NOW) + 99999}):
        forged = b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        assert refused(f"{forged}.{signature}", cluster=payload["cl"]) == (4401, "invalid token")


def test_an_altered_signature_is_invalid():
    token = issue(SECRET, "client_1", 2, 3600, NOW)
    last = token[-1]
    assert refused(token[:-1] + ("A" if last != "A" else "B")) == (4401, "invalid token")


def test_signature_is_checked_before_expiry_and_cluster():
    """A forged token is "invalid", never "expired" or "for cluster M" (which would say the
    forger's payload was read)."""
    assert refused(issue("forger", "x", 1, -10, NOW), cluster=2) == (4401, "invalid token")


@pytest.mark.parametrize("token", [
    "garbage",
    "a.b.c",
    ".",
    "abc.",
    ".abc",
    "é.é",
    "x" * 2000,
    "!!!.???",
])
def test_malformed_tokens_are_invalid(token):
    assert refused(token) == (4401, "invalid token")


@pytest.mark.parametrize("payload", [
    b"not json",
    b"\xff\xfe",
    b"[1, 2]",
    {"cl": 2, "exp": int(NOW) + 60},
    {"sub": 7, "cl": 2, "exp": int(NOW) + 60},
    {"sub": "a", "cl": "2", "exp": int(NOW) + 60},
    {"sub": "a", "cl": True, "exp": int(NOW) + 60},
    {"sub": "a", "cl": 2, "exp": float(NOW) + 60},
    {"sub": "a", "cl": 2},
])
def test_a_correctly_signed_payload_of_the_wrong_shape_is_invalid(payload):
    assert refused(signed(payload)) == (4401, "invalid token")


def test_a_well_formed_signed_payload_is_accepted():
    assert verify(SECRET, signed({"sub": "a", "cl": 2, "exp": int(NOW) + 1}), 2, NOW) == (
        "a", "main", None)


def test_an_empty_secret_is_refused():
    with pytest.raises(ValueError):
        issue("", "a", 1, 60, NOW)


def test_close_codes():
    assert (tokens.UNAUTHORIZED, tokens.FORBIDDEN) == (4401, 4403)
    assert str(TokenError(4401, "invalid token")) == "4401 invalid token"


def test_a_token_binds_the_stream():
    token = issue(SECRET, "fan", 1, 60, NOW, stream_id="final-2026")
    assert verify(SECRET, token, 1, NOW) == ("fan", "final-2026", None)
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==")) == {
        "sub": "fan", "cl": 1, "exp": int(NOW) + 60, "st": "final-2026"}


def test_a_signed_payload_whose_stream_is_not_a_string_is_invalid():
    assert refused(signed({"sub": "a", "cl": 2, "exp": int(NOW) + 60, "st": 7})) == (
        4401, "invalid token")


def test_a_token_carries_its_session():
    session = tokens.new_session()
    assert len(session) == 22 and session != tokens.new_session()
    token = issue(SECRET, "fan", 2, 60, NOW, session=session)
    assert verify(SECRET, token, 2, NOW) == ("fan", "main", session)
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==")) == {
        "sub": "fan", "cl": 2, "exp": int(NOW) + 60, "st": "main", "sid": session}
    # read: the claims of a genuine, unexpired token, whatever its cluster
    assert tokens.read(SECRET, token, NOW) == ("fan", 2, "main", session, int(NOW) + 60)
    with pytest.raises(TokenError, match="token expired"):
        tokens.read(SECRET, token, NOW + 60)
    with pytest.raises(TokenError, match="invalid token"):
        tokens.read("another-secret", token, NOW)


def test_a_signed_payload_whose_session_is_not_a_string_is_invalid():
    assert refused(signed({"sub": "a", "cl": 2, "exp": int(NOW) + 60, "sid": 7})) == (
        4401, "invalid token")
