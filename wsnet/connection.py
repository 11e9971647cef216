"""``Connection``: one client, as applications see it.

A façade over the server's private record of the connection (``_link``): an
application sees its identity, its context and two actions, never the socket,
the outbox or the session. Everything else is the server's and may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsnet._frames import Outgoing

if TYPE_CHECKING:
    from wsnet._lifecycle import Link

__all__ = ["Connection"]


class Connection:
    """One client connection: ``id``, ``peer``, ``request`` (during ``on_open``),
    ``context``, ``identity``, ``is_open``, ``deflate``, ``send()``, ``close()``."""

    __slots__ = ("_link", "id", "peer", "request", "context", "identity")

    def __init__(self, link: Link, ident: int, peer: tuple[str, int]) -> None:
        self._link = link
        #: A number unique within this server process.
        self.id = ident
        #: The client's (address, port).
        self.peer = peer
        #: The upgrade request. Kept only during ``on_open``: copy what you need,
        #: since header strings would otherwise dominate an idle connection's memory.
        self.request: Any = None
        #: Free for the application (a user record, a room list, ...).
        self.context: Any = None
        #: What ``Handler.on_upgrade`` returned for this connection (who it is).
        self.identity: Any = None

    @property
    def is_open(self) -> bool:
        return self._link.is_open

    @property
    def deflate(self) -> bool:
        """Did this client negotiate permessage-deflate?"""
        session = self._link.session
        return session is not None and session.deflate is not None

    def send(self, data: str | bytes) -> bool:
        """Queue a text (str) or binary (bytes) message for the next flush.

        Returns False, sending nothing, if the connection is not open or is a
        slow consumer: more than ``outbox_limit`` bytes were already waiting when
        a message was queued (it is then closed 1008 at the next tick).
        """
        link = self._link
        return link.lifecycle.fanout.send(link, Outgoing(data))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; ``on_close`` follows at once."""
        link = self._link
        link.lifecycle.close(link, code, reason)

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.peer[0]}:{self.peer[1]} {self._link.phase.value}>"
