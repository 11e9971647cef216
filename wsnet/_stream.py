"""Outbound TCP connections on the reactor: clients of other services (Redis).

A ``Stream`` is its channel's protocol, so its bytes travel the same write path
as clients' (an outbox, written at once); the socket calls stay in
``_reactor``, and a stream's user sees only bytes and three events.
"""

from __future__ import annotations

import errno
import os
from functools import partial
from typing import TYPE_CHECKING, Protocol

from wsnet._channel import Channel
from wsnet._clock import Timer
from wsnet._loop import READ, WRITE

if TYPE_CHECKING:
    from wsnet._reactor import Reactor

__all__ = ["Stream", "StreamProtocol"]


class StreamProtocol(Protocol):
    """What an outbound stream tells its user."""

    def stream_connected(self) -> None: ...
    def stream_data(self, data: bytes) -> None: ...
    def stream_lost(self, exc: OSError | None) -> None:
        """Connect failed or timed out, the peer closed (``None``), or an error;
        called once, unless ``close()`` came first."""


class Stream:
    """An outbound TCP connection served by the reactor (``Reactor.open_stream``)."""

    __slots__ = ("_reactor", "protocol", "_ch", "_timer", "connected", "closed")

    def __init__(self, reactor: Reactor, protocol: StreamProtocol) -> None:
        self._reactor = reactor
        self.protocol = protocol
        self._ch: Channel | None = None
        self._timer: Timer | None = None
        self.connected = False
        self.closed = False

    def write(self, data: bytes) -> None:
        """Queue ``data``; it is written at the end of this loop turn, together
        with whatever else the turn queued (a pipeline, not a send per
        command), the rest when the socket becomes writable. Bytes written
        before the connect completes wait for it."""
        ch = self._ch
        if ch is None or self.closed:
            return
        ch.outbox.append(data)
        if self.connected:
            self._reactor.write_soon(ch)

    def flush_blocking(self, timeout: float) -> bool:
        """Write what is queued, blocking at most ``timeout``; True if all went."""
        ch = self._ch
        if ch is None or self.closed or not self.connected:
            return False
        return self._reactor.flush_blocking(ch, timeout)

    def close(self) -> None:
        """Close now, dropping queued bytes; the protocol hears nothing more."""
        if self.closed:
            return
        self.closed = True
        self._reactor.cancel(self._timer)
        if self._ch is not None:
            self._reactor.close(self._ch)

    # Connecting: writability means done (or failed), and a timer bounds the
    # wait. Failures reach the protocol on a later loop turn, never from inside
    # ``open_stream``.

    def _connecting(self, ch: Channel, code: int, timeout: float) -> None:
        """Wait for the connect begun on ``ch``'s socket (``code`` from ``connect_ex``)."""
        reactor = self._reactor
        self._ch = ch
        if code not in (0, errno.EINPROGRESS):
            reactor.close(ch)
            reactor.call_later(0, partial(self._fail, OSError(code, os.strerror(code))))
            return
        reactor.loop.selector.register(ch.sock, WRITE, self._connected)
        ch.mask = WRITE
        self._timer = reactor.call_later(timeout, self._timed_out)

    def _connected(self) -> None:
        reactor, ch = self._reactor, self._ch
        assert ch is not None
        reactor.cancel(self._timer)
        code = reactor.socket_error(ch)
        reactor.loop.forget(ch.sock)
        ch.mask = 0
        if code:
            reactor.close(ch)
            self._fail(OSError(code, os.strerror(code)))
            return
        self.connected = True
        reactor.loop.watch(ch, READ)
        self.protocol.stream_connected()
        if not ch.dead:
            reactor.write_now(ch)

    def _timed_out(self) -> None:
        ch = self._ch
        if ch is not None and not self.connected and not ch.dead:
            self._reactor.close(ch)
            self._fail(TimeoutError(errno.ETIMEDOUT, "connect timed out"))

    def _fail(self, exc: OSError | None) -> None:
        if not self.closed:
            self.closed = True
            self._reactor.cancel(self._timer)
            self.protocol.stream_lost(exc)

    # The reactor's side: a stream is its channel's protocol.

    def data_received(self, ch: Channel, data: bytes) -> None:
        if not self.closed:
            self.protocol.stream_data(data)

    def eof_received(self, ch: Channel) -> None:
        self._reactor.close(ch)
        self._fail(None)

    def connection_lost(self, ch: Channel, exc: OSError | None) -> None:
        self._fail(exc)
