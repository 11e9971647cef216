"""The only module that calls socket methods.

The reactor moves bytes between sockets and the protocols above it; every
decision about those bytes is theirs (``_lifecycle``). Its ``Loop`` (``_loop``)
sleeps in ``select``, runs timers and fires the flush tick; this module does what
readiness asks: accept, read, write, connect, close.

Write path (ARCHITECTURE.md, "The write path"): protocols append to a channel's
``Outbox`` and mark it dirty; the flush tick writes each dirty outbox with one
``send``/``sendmsg``. Only a partial write registers the socket for writability,
and draining unregisters it. A channel whose outbox is over the high-water mark
is not read from.

TLS runs on the same loop: the handshake is driven by readiness like any other
I/O (``do_handshake`` until it stops asking for more), so a slow or silent TLS
client costs one socket and a timer, never a stalled loop.
"""

from __future__ import annotations

import array
import errno
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable
from functools import partial

from wsnet._channel import Channel, ReactorProtocol
from wsnet._loop import READ, WRITE, Loop
from wsnet._outbox import Outbox
from wsnet._stream import Stream, StreamProtocol

__all__ = [
    "READ", "WRITE", "Reactor", "ReactorProtocol", "Stream", "StreamProtocol", "handoff_pairs",
    "shared_listener",
]

log = logging.getLogger("wsnet")

_RECV_BYTES = 64 * 1024
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
#: recv() flags of peer_gone, combined once (an IntFlag ``|`` per call costs).
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
#: accept() failures that mean "out of descriptors or memory right now".
_ACCEPT_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: accept() failures about one connection that died in the queue: skip it.
_ACCEPT_TRANSIENT = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}
#: ioctl asking a TCP socket for the bytes its peer has not acknowledged yet
#: (SIOCOUTQ, which is TIOCOUTQ's number): Linux only, None elsewhere.
_OUTQ: int | None = None
if sys.platform == "linux":
    import fcntl
    import termios

    _OUTQ = termios.TIOCOUTQ


class Reactor:
    """Every channel's I/O, the listener and outbound connects, driven by its ``Loop``."""

    def __init__(
        self,
        protocol: ReactorProtocol,
        *,
        flush_interval: float,
        high_water: int,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        send_buffer: int = 0,
    ) -> None:
        self.protocol = protocol
        self.ssl_context = ssl_context
        self.high_water = high_water
        #: SO_SNDBUF for accepted sockets (0: the kernel's own, autotuned).
        self.send_buffer = send_buffer
        #: Timers, the tick, stop requests; ``clock``, ``timers``, ``call_later``
        #: and ``cancel`` below are its own.
        self.loop = loop = Loop(flush_interval=flush_interval, tick=self._tick_and_flush,
                                clock=clock)
        self.clock, self.timers = loop.clock, loop.timers
        self.call_later, self.cancel = loop.call_later, loop.cancel
        self._watch = loop.watch
        self._acceptor: _Acceptor | None = None
        self._handoff: _Handoff | None = None
        self._dirty: list[Channel] = []
        #: Channels the kernel refused part of a write (``ch.blocked``): with
        #: the dirty and the soon ones, the only channels whose outboxes hold
        #: anything (``queued_bytes``).
        self._blocked: set[Channel] = set()
        self._soon: list[Channel] = []  # written at the end of this loop turn
        self._in_protocol_write = False

    # -- listening -----------------------------------------------------------

    def listen(
        self, host: str, port: int, backlog: int, *, reuse_port: bool = False,
        fd: int | None = None,
    ) -> tuple[str, int]:
        """Bind and listen; raises OSError (EADDRINUSE, ...) to the caller.

        With ``reuse_port``, several processes may listen on the same port and
        the kernel spreads new connections over them. With ``fd``, accept on a
        listening socket this process inherited instead (``--workers``: the
        supervisor's, whose one accept queue outlives any worker).
        """
        if fd is not None:
            sock = socket.socket(fileno=fd)
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                sock.detach()
                raise OSError(f"descriptor {fd} is not a listening socket")
        else:
            sock = _listening(host, port, backlog, reuse_port=reuse_port)
        sock.setblocking(False)
        self._acceptor = _Acceptor(self, sock, SHARED_ACCEPT_BATCH if fd is not None else None)
        bound = sock.getsockname()
        return bound[0], bound[1]

    def stop_listening(self) -> None:
        """No new connections: neither accepted nor handed over by other workers
        (those wait in this worker slot's socket pair for its replacement)."""
        if self._acceptor is not None:
            self._acceptor.close()
            self._acceptor = None
        if self._handoff is not None:
            self._handoff.close()
            self._handoff = None

    # -- connections handed over between workers (``_placement``) -------------

    def take_handoffs(self, inbox: int, outboxes: list[int]) -> None:
        """Receive connections other workers hand over on ``inbox`` and hand
        ours over on ``outboxes`` (one per worker slot, 1..N): descriptors the
        supervisor made with ``handoff_pairs`` and keeps open."""
        self._handoff = _Handoff(self, inbox, outboxes)

    def hand_off(self, ch: Channel, slot: int, data: bytes) -> bool:
        """Send ``ch``'s socket and the bytes read from it to worker ``slot``,
        then close it here. False (nothing changed) if it could not be sent:
        the slot's queue is full or the data too large; serve it here then."""
        if self._handoff is None or ch.dead or ch.tls or not self._handoff.send(slot, ch, data):
            return False
        self.close(ch)
        return True

    # -- outbound streams (clients of other services) --------------------------

    def open_stream(
        self, host: str, port: int, protocol: StreamProtocol, *, timeout: float,
    ) -> Stream:
        """Connect to ``host:port`` without blocking (name resolution aside: give
        an address or a name in /etc/hosts); ``protocol`` hears the outcome.

        The stream's bytes travel the same write path as clients' (an outbox,
        written at once), so it needs no socket code of its own.
        """
        stream = Stream(self, protocol)
        try:
            sock, code = _connecting(host, port)
        except OSError as exc:
            self.call_later(0, partial(stream._fail, exc))
        else:
            stream._connecting(Channel(sock, stream), code, timeout)
        return stream

    def socket_error(self, ch: Channel) -> int:
        """The error pending on ``ch``'s socket (a connect's outcome); 0 if none."""
        return ch.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def flush_blocking(self, ch: Channel, timeout: float) -> bool:
        """Write the outbox, waiting up to ``timeout`` (shutdown paths only)."""
        if ch.dead:
            return False
        sock = ch.sock
        box = ch.outbox
        try:
            sock.settimeout(timeout)
            for chunk in box.chunks:
                sock.sendall(chunk)
            box.consume(box.nbytes)
            return True
        except OSError:
            return False
        finally:
            sock.setblocking(False)

    # -- channel I/O ---------------------------------------------------------

    def _update_mask(self, ch: Channel) -> None:
        want = WRITE if ch.blocked else 0
        if ch.linger or ch.outbox.nbytes <= self.high_water:
            want |= READ
        self._watch(ch, want)

    def mark_dirty(self, ch: Channel) -> None:
        """Write this channel's outbox at the next flush."""
        if not ch.dirty and not ch.blocked:
            ch.dirty = True
            self._dirty.append(ch)

    def write_now(self, ch: Channel) -> None:
        """Write at once (handshake responses, close frames).

        A write error closes the channel now but reports ``connection_lost``
        on the next loop turn, never from inside this call.
        """
        if ch.outbox and not ch.blocked:
            nested, self._in_protocol_write = self._in_protocol_write, True
            try:
                self._write(ch)
            finally:
                self._in_protocol_write = nested

    def queued_bytes(self) -> int:
        """Bytes in outboxes not yet written. Only channels waiting for the
        flush, the end of this turn or writability hold any, so this costs
        O(those), not O(connections): at 17,000 connections a worker's
        once-a-second sum over all of them was 2-8 % of its samples."""
        waiting = self._blocked.union(self._dirty, self._soon)
        return sum(ch.outbox.nbytes for ch in waiting)

    def unacknowledged(self, ch: Channel) -> int | None:
        """Bytes written to the socket that the peer's TCP has not acknowledged
        yet (sent or not); None where the kernel will not say."""
        if _OUTQ is None or ch.dead:
            return None
        try:
            raw = fcntl.ioctl(ch.sock.fileno(), _OUTQ, bytes(4))
        except OSError:
            return None
        return int.from_bytes(raw, sys.byteorder, signed=True)

    def peer_gone(self, ch: Channel) -> bool:
        """Whether the peer has closed its side already (its EOF or reset waits
        unread): a client that gave up while queued in the accept backlog left
        its request and its FIN there. Not known under TLS: False."""
        if ch.dead:
            return True
        if ch.tls:
            return False
        try:
            return ch.sock.recv(1, _PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def write_soon(self, ch: Channel) -> None:
        """Write at the end of this loop turn: everything a turn queues for one
        channel goes in one send. A stream to Redis gets a command per join,
        leave or publish, and a connect storm handles many of those per turn;
        a send each was a tenth of a worker's time."""
        soon = self._soon
        if not soon or soon[-1] is not ch:
            soon.append(ch)

    def _end_turn(self) -> None:
        if self._soon:
            soon, self._soon = self._soon, []
            for ch in soon:
                if not ch.dead:
                    self.write_now(ch)

    def close_after_drain(self, ch: Channel) -> None:
        """Half-close once the outbox is written, then wait for the peer's EOF.

        Closing with unread input makes the kernel send RST, which can destroy our
        last bytes in flight (a close frame, an error response) before the peer
        reads them; shutting down the write side first lets them arrive.
        """
        if ch.linger or ch.dead:
            return
        ch.linger = True
        nested, self._in_protocol_write = self._in_protocol_write, True
        try:
            if ch.outbox:
                self._write(ch)
            else:
                self._shutdown_write(ch)
        finally:
            self._in_protocol_write = nested

    def _shutdown_write(self, ch: Channel) -> None:
        # On a TLS socket this sends no close_notify: peers treat the TCP FIN as
        # the end, and a non-blocking unwrap() is not worth its states here.
        try:
            ch.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._lost(ch, exc)
            return
        self._update_mask(ch)

    def _write(self, ch: Channel) -> None:
        if ch.dead:
            return
        if ch.tls_pending:
            self._tls_handshake(ch)
            return
        box = ch.outbox
        chunks = box.chunks
        if chunks:
            try:
                if ch.tls:
                    assert isinstance(ch.sock, ssl.SSLSocket)
                    if _write_tls(ch.sock, box):
                        # Waiting for writability would spin: read (whatever the
                        # backlog) and retry at the next flush.
                        ch.blocked = False
                        self._blocked.discard(ch)
                        self._watch(ch, READ)
                        self.mark_dirty(ch)
                        return
                else:
                    if len(chunks) == 1:
                        sent = ch.sock.send(chunks[0])
                    else:
                        sent = ch.sock.sendmsg(chunks[:_IOV_MAX])
                    box.consume(sent)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._lost(ch, exc)
                return
        if box:
            ch.blocked = True
            self._blocked.add(ch)
        else:
            ch.blocked = False
            self._blocked.discard(ch)
        if not box and ch.linger:
            self._shutdown_write(ch)
        else:
            self._update_mask(ch)

    def _tls_handshake(self, ch: Channel) -> None:
        sock = ch.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(ch, READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(ch, WRITE)
            return
        except (ssl.SSLError, OSError) as exc:
            self._lost(ch, exc)
            return
        ch.tls_pending = False
        self._watch(ch, READ)
        if sock.pending():  # the client's request may have come with its Finished
            self._on_readable(ch)

    def _on_readable(self, ch: Channel) -> None:
        if ch.tls_pending:
            self._tls_handshake(ch)
            return
        sock = ch.sock
        while True:
            try:
                data = sock.recv(_RECV_BYTES)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                break
            except OSError as exc:
                self._lost(ch, exc)
                return
            if data:
                ch.protocol.data_received(ch, data)
            else:
                ch.protocol.eof_received(ch)
            # Bytes already decrypted inside OpenSSL never wake the selector.
            if ch.dead or not ch.tls or not sock.pending():  # type: ignore[attr-defined]
                break
        if not ch.dead:
            self._update_mask(ch)

    def _lost(self, ch: Channel, exc: OSError | None) -> None:
        log.debug("connection lost: %s", exc)
        self.close(ch)
        if self._in_protocol_write:
            # The protocol is inside its own call to write_now/close_after_drain:
            # tell it on the next loop turn rather than re-entering it (as asyncio
            # does with call_soon), so it never sees its state change under it.
            self.call_later(0, partial(ch.protocol.connection_lost, ch, exc))
        else:
            ch.protocol.connection_lost(ch, exc)

    def close(self, ch: Channel) -> None:
        """Close the socket now; queued output is dropped."""
        if ch.dead:
            return
        ch.dead = True
        if ch.mask:
            self.loop.forget(ch.sock)
            ch.mask = 0
        ch.sock.close()
        ch.outbox.discard()
        self._blocked.discard(ch)

    # -- flushing ------------------------------------------------------------

    def flush(self) -> None:
        """Write every dirty outbox once."""
        dirty, self._dirty = self._dirty, []
        for ch in dirty:
            ch.dirty = False
            if ch.blocked:
                continue
            box = ch.outbox
            chunks = box.chunks
            if len(chunks) == 1 and ch.mask == READ and not ch.linger and not ch.tls:
                # The common case, one frame for a reader: one send, no bookkeeping.
                # This repeats the plain-socket branch of ``_write`` on purpose:
                # it is most of the traffic, and the call and checks it skips
                # show in profiles of large broadcasts.
                try:
                    sent = ch.sock.send(chunks[0])
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    self._lost(ch, exc)
                    continue
                if sent == box.nbytes:
                    chunks.clear()
                    box.nbytes = 0
                    box.partial = False
                    continue
                box.consume(sent)
                ch.blocked = True
                self._blocked.add(ch)
                self._update_mask(ch)
                continue
            try:
                self._write(ch)
            except Exception:
                log.exception("internal error while writing")
                self._lost(ch, None)

    def _tick_and_flush(self) -> None:
        try:
            self.protocol.tick()
        except Exception:
            log.exception("internal error in the tick")
        self.flush()

    def _serve(self, ch: Channel, mask: int) -> None:
        if mask & WRITE:
            self._write(ch)
        if mask & READ and not ch.dead:
            self._on_readable(ch)

    def run(self, until: Callable[[], bool]) -> None:
        """Run the loop until ``until()`` is true (checked once per turn)."""
        self.loop.run(until, self._serve, partial(self._lost, exc=None), self._end_turn)

    def close_all(self) -> None:
        self.stop_listening()
        self.loop.close()


#: Accepts per wake-up on a listening socket shared with other processes.
SHARED_ACCEPT_BATCH = 4


class _Acceptor:
    """The listening socket: accepts every queued connection when readable, and
    pauses instead of spinning when the process is out of descriptors."""

    def __init__(
        self, reactor: Reactor, listener: socket.socket, batch: int | None = None,
    ) -> None:
        self._reactor = reactor
        self._listener = listener
        #: At most this many accepts per wake-up (None: all that wait). A queue
        #: shared by worker processes wakes them all; whoever runs first would
        #: otherwise take every connection, and the busiest worker grow busier.
        self._batch = batch
        self._backoff = 0.0
        self._closed = False
        #: Linux copies TCP_NODELAY and a set SO_SNDBUF from the listening socket
        #: to every socket it accepts: set once here, not twice per connection.
        self._inherits = sys.platform == "linux"
        if self._inherits:
            _set_accepted_options(listener, reactor.send_buffer)
        reactor.loop.selector.register(listener, READ, self._on_accept)

    def close(self) -> None:
        self._closed = True
        self._reactor.loop.forget(self._listener)
        self._listener.close()

    def _on_accept(self) -> None:
        reactor, listener = self._reactor, self._listener
        left = self._batch
        while left is None or left > 0:
            if left is not None:
                left -= 1
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _ACCEPT_EXHAUSTED:
                    self._pause(exc)
                    return
                if exc.errno in _ACCEPT_TRANSIENT:
                    continue
                raise
            self._backoff = 0.0
            try:
                sock.setblocking(False)
                if not self._inherits:
                    _set_accepted_options(sock, reactor.send_buffer)
                if reactor.ssl_context is not None:
                    sock = reactor.ssl_context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False,
                    )
            except OSError:  # the peer already left
                sock.close()
                continue
            ch = reactor.protocol.connection_made(sock, peer[:2])
            if ch is None:  # refused by the protocol: no answer, no state
                sock.close()
                continue
            reactor._watch(ch, READ)

    def _pause(self, exc: OSError) -> None:
        """Out of descriptors: stop accepting for a while instead of spinning.

        The queued connections wait in the kernel backlog; we retry with a
        doubling delay (0.1 s to 2 s) and log once per episode.
        """
        if self._backoff == 0.0:
            log.warning("accept failed (%s): pausing new connections", os.strerror(exc.errno or 0))
        self._backoff = min(2.0, max(0.1, self._backoff * 2))
        self._reactor.loop.forget(self._listener)
        self._reactor.call_later(self._backoff, self._resume)

    def _resume(self) -> None:
        if not self._closed:
            self._reactor.loop.selector.register(self._listener, READ, self._on_accept)
            self._on_accept()


#: The bytes a handed-over connection may carry (its request head, and whatever
#: followed it): more than any ``max_header_bytes`` worth setting.
HANDOFF_MAX_BYTES = 64 * 1024
#: Handed-over connections taken per wake-up, so a burst cannot starve the loop.
HANDOFF_BATCH = 64


class _Handoff:
    """This worker's ends of the node's socket pairs: sockets with the bytes
    already read from them travel as one datagram with one SCM_RIGHTS
    descriptor; a datagram socket pair keeps each whole and in order."""

    def __init__(self, reactor: Reactor, inbox: int, outboxes: list[int]) -> None:
        self._reactor = reactor
        self._inbox = socket.socket(fileno=inbox)
        # Non-blocking is a flag of the shared description: every worker wants it.
        self._inbox.setblocking(False)
        self._outboxes = [socket.socket(fileno=fd) for fd in outboxes]
        reactor.loop.selector.register(self._inbox, READ, self._on_readable)

    def send(self, slot: int, ch: Channel, data: bytes) -> bool:
        if len(data) > HANDOFF_MAX_BYTES or not 1 <= slot <= len(self._outboxes):
            return False
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [ch.sock.fileno()]))]
        try:
            # Not socket.send_fds: CPython 3.11's ignores its flags argument,
            # and a blocking send here is a node-wide deadlock (each worker stuck
            # sending to another whose queue is full while it sends to us).
            self._outboxes[slot - 1].sendmsg([data], rights, socket.MSG_DONTWAIT)
        except OSError as exc:  # EAGAIN: its queue is full; anything else: same answer
            log.debug("hand-off to worker %d failed: %s", slot, exc)
            return False
        return True

    def _on_readable(self) -> None:
        reactor = self._reactor
        for _ in range(HANDOFF_BATCH):
            try:
                data, fds, flags, _ = socket.recv_fds(
                    self._inbox, HANDOFF_MAX_BYTES, 1, socket.MSG_DONTWAIT,
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("cannot receive a handed-over connection: %s", exc)
                return
            if not fds:
                continue
            sock = socket.socket(fileno=fds[0])
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                sock.close()  # cannot happen with our own senders; never half a request
                continue
            try:
                sock.setblocking(False)
                peer = sock.getpeername()
            except OSError:  # the client left while in transit
                sock.close()
                continue
            ch = reactor.protocol.connection_handed(sock, peer[:2], data)
            if ch is None:
                sock.close()
                continue
            if not ch.dead:
                reactor._update_mask(ch)

    def close(self) -> None:
        self._reactor.loop.forget(self._inbox)
        self._inbox.close()
        for sock in self._outboxes:
            sock.close()


def handoff_pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    """One (inbox, outbox) Unix datagram socket pair per worker slot, for a
    supervisor to keep open and pass down (inheritable): a worker reads its
    slot's inbox, and every worker may write to any slot's outbox."""
    pairs = []
    for _ in range(count):
        inbox, outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for sock in (inbox, outbox):
            sock.set_inheritable(True)
        pairs.append((inbox, outbox))
    return pairs


def _write_tls(sock: ssl.SSLSocket, box: Outbox) -> bool:
    """Write chunk by chunk (SSL sockets have no sendmsg). True means OpenSSL
    must read before it can write (a key update): retry later.

    OpenSSL wants a write it refused retried with the same bytes, so a chunk
    it refused is marked partial: ``Outbox.discard`` then keeps it.
    """
    while box.chunks:
        try:
            sent = sock.send(box.chunks[0])
        except ssl.SSLWantWriteError:
            box.partial = True
            return False
        except ssl.SSLWantReadError:
            box.partial = True
            return True
        box.consume(sent)
    return False


def _set_accepted_options(sock: socket.socket, send_buffer: int) -> None:
    """No Nagle delay (frames leave as the flush writes them); the configured
    send buffer, if any (``Config.socket_send_buffer``)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if send_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)


def _connecting(host: str, port: int) -> tuple[socket.socket, int]:
    """A non-blocking socket with a connect to ``host:port`` begun, and the
    errno ``connect_ex`` gave (0 or EINPROGRESS on the way to success)."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, sock.connect_ex(addr)
    except OSError:
        sock.close()
        raise


def shared_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket for workers to inherit (``--workers``).

    Its one accept queue belongs to the supervisor that holds it: a worker that
    exits, crashes or drains closes only its own descriptor, and a connection
    waiting in the queue is accepted by another worker instead of being reset
    (as it would be in a closing ``SO_REUSEPORT`` listener's own queue). Blocking
    as made; each worker sets its descriptor non-blocking (the flag is shared,
    which every worker wants). Raises OSError (EADDRINUSE, ...) like ``listen``.
    """
    sock = _listening(host, port, backlog, reuse_port=False)
    sock.set_inheritable(True)
    return sock


def _listening(host: str, port: int, backlog: int, *, reuse_port: bool) -> socket.socket:
    """Bound (SO_REUSEADDR) and listening; closed again if ``listen`` fails."""
    sock = _bound(host, port, reuse_addr=True, reuse_port=reuse_port)
    try:
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def _bound(host: str, port: int, *, reuse_addr: bool, reuse_port: bool) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock
