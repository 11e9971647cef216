"""What the reactor knows about a connected socket, and whom it tells.

Kept apart from ``_reactor`` so that the modules above it (the server's
lifecycle, streams' users) can name these types without importing the one
module that does socket I/O.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Protocol

from wsnet._outbox import Outbox

if TYPE_CHECKING:
    import socket

__all__ = ["Channel", "ChannelProtocol", "ReactorProtocol"]


class ChannelProtocol(Protocol):
    """What the reactor calls about one channel; each channel names its own."""

    def data_received(self, ch: Channel, data: bytes) -> None: ...
    def eof_received(self, ch: Channel) -> None: ...
    def connection_lost(self, ch: Channel, exc: OSError | None) -> None: ...


class Channel:
    """A connected socket as the reactor sees it: its output and its selector state.

    The reactor owns every field; a protocol reads ``outbox`` (to queue bytes)
    and ``dead``, and keeps its own state in its own record beside it.
    """

    __slots__ = (
        "sock", "protocol", "outbox", "mask", "dirty", "blocked", "linger", "dead", "tls",
        "tls_pending",
    )

    def __init__(self, sock: socket.socket, protocol: ChannelProtocol) -> None:
        self.sock = sock
        #: Hears this channel's bytes, EOF and loss.
        self.protocol = protocol
        self.tls = isinstance(sock, ssl.SSLSocket)
        #: A TLS socket whose handshake has not finished yet.
        self.tls_pending = self.tls
        self.outbox = Outbox()
        self.mask = 0  # selector interest currently registered
        self.dirty = False  # in the reactor's flush list
        self.blocked = False  # the kernel refused part of the last write
        self.linger = False  # shut our side once drained, then wait for EOF
        self.dead = False  # socket closed


class ReactorProtocol(Protocol):
    """What the reactor calls on the server: a new connection (accepted, or
    handed over by another worker with the bytes it read), and the tick."""

    def connection_made(self, sock: socket.socket, peer: tuple[str, int]) -> Channel | None: ...
    def connection_handed(
        self, sock: socket.socket, peer: tuple[str, int], data: bytes,
    ) -> Channel | None: ...
    def tick(self) -> None: ...
