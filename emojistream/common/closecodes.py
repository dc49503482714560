"""The WebSocket close codes the WebSocket servers send viewers, each with its reason.

    4400  a malformed since=<window_start> (refused with HTTP 400 before the handshake;
          this code only if a request got past that)   fix the URL
    4401  missing, invalid or expired token      register again: a fresh token
    4403  a token for another cluster            register again
    4408  too slow: more unsent data than WS_MAX_VIEWER_BUFFER_BYTES
                                                 reconnect (with backoff)
    4409  replaced by a newer connection of the same session (the same token's session id:
          the viewer itself, in another tab or process)
                                                 do NOT reconnect: the newer one is watching
    4429  too many connections from this address (WS_MAX_CONNECTIONS_PER_ADDRESS)
                                                 reconnect later (with backoff)

Like HTTP's 400, 401, 403, 408, 409 and 429, plus 4000 (the range RFC 6455 leaves to applications).
"""

BAD_REQUEST = 4400
UNAUTHORIZED = 4401
FORBIDDEN = 4403
TOO_SLOW = 4408
REPLACED = 4409
TOO_MANY = 4429
