"""A WebSocket server's connections: who is connected, the limits per client, closing."""

from __future__ import annotations

import asyncio
from collections import Counter

from websockets.asyncio.server import ServerConnection


def peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"


def address_of(connection: ServerConnection) -> str:
    """The client's IP address (the limits per address count by it)."""
    address = connection.remote_address
    return address[0] if address else "?"


class Connections:
    """Viewers and subscribers connected now, each viewing session's live connection, and the
    viewer connections of each client address.

    A session is (client id, the session id of its token): only the holder of a token knows its
    session, so only the viewer itself (reconnecting, reloading, failing over) can replace its
    connection; another party registering the same client id gets another session and is
    served alongside (docs/delivery.md#viewer-identity-sessions)."""

    def __init__(self, max_per_address: int, close_timeout_s: float):
        self.max_per_address = max_per_address
        self.close_timeout_s = close_timeout_s
        self.viewers: set[ServerConnection] = set()
        self.subscribers: set[ServerConnection] = set()
        # (client id, session id) -> that session's live connection
        self.viewer_of: dict[tuple[str, str], ServerConnection] = {}
        self.per_address: Counter[str] = Counter()
        self.leaving: set[ServerConnection] = set()  # closed by the server, not gone yet
        self._closing: set[asyncio.Task] = set()

    def address_full(self, connection: ServerConnection) -> bool:
        return self.per_address[address_of(connection)] >= self.max_per_address

    def add_viewer(self, connection: ServerConnection, client_id: str,
                   session: str | None) -> ServerConnection | None:
        """Count a viewer in; the older connection of the same session it replaces, if any (a
        token without a session replaces none and is replaced by none)."""
        self.per_address[address_of(connection)] += 1
        if session is None:
            return None
        previous = self.viewer_of.get((client_id, session))
        self.viewer_of[(client_id, session)] = connection
        return previous

    def remove_viewer(self, connection: ServerConnection, client_id: str,
                      session: str | None) -> None:
        if session is not None and self.viewer_of.get((client_id, session)) is connection:
            del self.viewer_of[(client_id, session)]
        address = address_of(connection)
        self.per_address[address] -= 1
        if not self.per_address[address]:
            del self.per_address[address]

    def close_later(self, connection: ServerConnection, code: int, reason: str) -> None:
        """Close without waiting for it here; the connection's handler then ends and forgets
        it."""
        self.leaving.add(connection)
        task = asyncio.create_task(self._close(connection, code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, connection: ServerConnection, code: int, reason: str) -> None:
        """The closing handshake, and the connection dropped if it takes longer than
        WS_CLOSE_TIMEOUT_S: websockets' close() first waits for the unsent data to drain,
        which for a viewer that stopped reading never happens."""
        try:
            await asyncio.wait_for(connection.close(code, reason), self.close_timeout_s)
        except TimeoutError:
            connection.transport.abort()
