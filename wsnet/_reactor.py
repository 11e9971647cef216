"""The only module that touches sockets and selectors.

A single-threaded loop in the shape of curio's kernel: sleep in ``select`` until
the next deadline, dispatch readiness, run due timers, flush. It moves bytes and
fires timers; every decision about those bytes is the protocol's (``server.py``).

Write path (DESIGN §1): protocols append to a channel's ``Outbox`` and mark it
dirty; the flush tick writes each dirty outbox with one ``send``/``sendmsg``. Only a
partial write registers the socket for writability, and draining unregisters it.
A channel whose outbox is over the high-water mark is not read from.

TLS runs on the same loop: the handshake is driven by readiness like any other
I/O (``do_handshake`` until it stops asking for more), so a slow or silent TLS
client costs one socket and a timer, never a stalled loop.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import socket
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import Protocol

from wsnet._channel import Channel
from wsnet._clock import Timer, Timers, next_tick
from wsnet._outbox import Outbox
from wsnet._stream import Stream, StreamProtocol

__all__ = [
    "READ", "WRITE", "Reactor", "ReactorProtocol", "Stream", "StreamProtocol", "reserve_port",
]

log = logging.getLogger("wsnet")

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
_RECV_BYTES = 64 * 1024
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
#: accept() failures that mean "out of descriptors or memory right now".
_ACCEPT_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: accept() failures about one connection that died in the queue: skip it.
_ACCEPT_TRANSIENT = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}


class ReactorProtocol(Protocol):
    """What the reactor calls on the server: a new connection, and the tick."""

    def connection_made(self, sock: socket.socket, peer: tuple[str, int]) -> Channel | None: ...
    def tick(self) -> None: ...


class Reactor:
    """Owns the selector, the listening socket, timers and every channel's I/O."""

    def __init__(
        self,
        protocol: ReactorProtocol,
        *,
        flush_interval: float,
        high_water: int,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.protocol = protocol
        self.ssl_context = ssl_context
        self.clock = clock
        self.timers = Timers()
        self.flush_interval = flush_interval
        self.high_water = high_water
        self._sel = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._dirty: list[Channel] = []
        self._origin = clock()
        self._tick_timer: Timer | None = None
        self._accept_backoff = 0.0
        self._running = False
        self._stop_requested = False
        self._in_protocol_write = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, READ, self._on_wakeup)
        self.on_stop_request: Callable[[], None] | None = None

    # -- timers --------------------------------------------------------------

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        return self.timers.call_at(self.clock() + delay, callback)

    def cancel(self, timer: Timer | None) -> None:
        self.timers.cancel(timer)

    # -- listening -----------------------------------------------------------

    def listen(
        self, host: str, port: int, backlog: int, *, reuse_port: bool = False,
    ) -> tuple[str, int]:
        """Bind and listen; raises OSError (EADDRINUSE, ...) to the caller.

        With ``reuse_port``, several processes may listen on the same port and
        the kernel spreads new connections over them (worker processes).
        """
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._listener = sock
        self._sel.register(sock, READ, self._on_accept)
        bound = sock.getsockname()
        return bound[0], bound[1]

    def stop_listening(self) -> None:
        if self._listener is not None:
            self._unregister_quietly(self._listener)
            self._listener.close()
            self._listener = None

    def _on_accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        while True:
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _ACCEPT_EXHAUSTED:
                    self._pause_accepting(exc)
                    return
                if exc.errno in _ACCEPT_TRANSIENT:
                    continue
                raise
            self._accept_backoff = 0.0
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.ssl_context is not None:
                    sock = self.ssl_context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False,
                    )
            except OSError:  # the peer already left
                sock.close()
                continue
            ch = self.protocol.connection_made(sock, peer[:2])
            if ch is None:  # refused by the protocol: no answer, no state
                sock.close()
                continue
            self._set_mask(ch, READ)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors: stop accepting for a while instead of spinning.

        The queued connections wait in the kernel backlog; we retry with a
        doubling delay (0.1 s to 2 s) and log once per episode.
        """
        if self._accept_backoff == 0.0:
            log.warning("accept failed (%s): pausing new connections", os.strerror(exc.errno or 0))
        self._accept_backoff = min(2.0, max(0.1, self._accept_backoff * 2))
        listener = self._listener
        if listener is None:
            return
        self._unregister_quietly(listener)

        def resume() -> None:
            if self._listener is listener:
                self._sel.register(listener, READ, self._on_accept)
                self._on_accept()

        self.call_later(self._accept_backoff, resume)

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
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, _, _, _, sockaddr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            self.call_later(0, partial(stream._fail, exc))  # never from inside this call
            return stream
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ch = stream._ch = Channel(sock, stream)
        code = sock.connect_ex(sockaddr)
        if code not in (0, errno.EINPROGRESS):
            self.close(ch)
            self.call_later(0, partial(stream._fail, OSError(code, os.strerror(code))))
            return stream
        self._sel.register(sock, WRITE, partial(self._stream_connected, stream))
        ch.mask = WRITE
        stream._timer = self.call_later(timeout, partial(self._stream_timed_out, stream))
        return stream

    def _stream_connected(self, stream: Stream) -> None:
        ch = stream._ch
        assert ch is not None
        self.cancel(stream._timer)
        code = ch.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._unregister_quietly(ch.sock)
        ch.mask = 0
        if code:
            self.close(ch)
            stream._fail(OSError(code, os.strerror(code)))
            return
        stream.connected = True
        self._set_mask(ch, READ)
        stream.protocol.stream_connected()
        if not ch.dead:
            self.write_now(ch)

    def _stream_timed_out(self, stream: Stream) -> None:
        ch = stream._ch
        if ch is not None and not stream.connected and not ch.dead:
            self.close(ch)
            stream._fail(TimeoutError(errno.ETIMEDOUT, "connect timed out"))

    def _flush_blocking(self, ch: Channel, timeout: float) -> bool:
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

    def _set_mask(self, ch: Channel, want: int) -> None:
        have = ch.mask
        if want == have or ch.dead:
            return
        if have == 0:
            self._sel.register(ch.sock, want, ch)
        elif want == 0:
            self._sel.unregister(ch.sock)
        else:
            self._sel.modify(ch.sock, want, ch)
        ch.mask = want

    def _update_mask(self, ch: Channel) -> None:
        want = WRITE if ch.blocked else 0
        if ch.linger or ch.outbox.nbytes <= self.high_water:
            want |= READ
        self._set_mask(ch, want)

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
                    if self._write_tls(ch.sock, box):
                        # Waiting for writability would spin: read (whatever the
                        # backlog) and retry at the next flush.
                        ch.blocked = False
                        self._set_mask(ch, READ)
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
        ch.blocked = bool(box)
        if not box and ch.linger:
            self._shutdown_write(ch)
        else:
            self._update_mask(ch)

    @staticmethod
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

    def _tls_handshake(self, ch: Channel) -> None:
        sock = ch.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_mask(ch, READ)
            return
        except ssl.SSLWantWriteError:
            self._set_mask(ch, WRITE)
            return
        except (ssl.SSLError, OSError) as exc:
            self._lost(ch, exc)
            return
        ch.tls_pending = False
        self._set_mask(ch, READ)
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
            self._unregister_quietly(ch.sock)
            ch.mask = 0
        ch.sock.close()
        ch.outbox.discard()

    def _unregister_quietly(self, sock: socket.socket) -> None:
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass

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
                self._update_mask(ch)
                continue
            try:
                self._write(ch)
            except Exception:
                log.exception("internal error while writing")
                self._lost(ch, None)

    @staticmethod
    def _timer_failed(exc: BaseException) -> None:
        log.error("internal error in a timer", exc_info=exc)

    def _tick_and_flush(self) -> None:
        try:
            self.protocol.tick()
        except Exception:
            log.exception("internal error in the tick")
        self.flush()

    def _on_tick(self) -> None:
        try:
            self._tick_and_flush()
        finally:
            self._arm_tick()

    def _arm_tick(self) -> None:
        """Schedule the next tick on the grid ``origin + k * flush_interval``.

        A tick that overran its period (a flush to many sockets can) is followed
        at once by the latest grid point it missed, so queued data waits no extra
        period; older missed points are skipped, never fired in a burst.
        """
        period = self.flush_interval
        if period <= 0:
            return
        now = self.clock()
        when = next_tick(self._origin, period, now - period)
        last = self._tick_timer
        if last is not None and when <= last.when:
            when = next_tick(self._origin, period, last.when)
        elif last is None and when <= now:
            when = next_tick(self._origin, period, now)
        self._tick_timer = self.timers.call_at(when, self._on_tick)

    # -- the loop ------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to call ``on_stop_request`` (safe from signal handlers and
        other threads)."""
        self._stop_requested = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def _on_wakeup(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        if self._stop_requested:
            self._stop_requested = False
            if self.on_stop_request is not None:
                self.on_stop_request()

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM request a graceful stop (main thread only)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda _s, _f: self.request_stop())

    def run(self, until: Callable[[], bool]) -> None:
        """Run until ``until()`` is true (checked once per turn)."""
        sel = self._sel
        timers = self.timers
        clock = self.clock
        self._arm_tick()
        while not until():
            deadline = timers.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - clock())
            for key, mask in sel.select(timeout):
                data = key.data
                try:
                    if isinstance(data, Channel):
                        if mask & WRITE:
                            self._write(data)
                        if mask & READ and not data.dead:
                            self._on_readable(data)
                    else:
                        data()
                except Exception:
                    log.exception("internal error while serving a connection")
                    if isinstance(data, Channel):
                        self._lost(data, None)
            timers.run_due(clock(), self._timer_failed)
            if self.flush_interval == 0:
                self._tick_and_flush()
        self.timers.cancel(self._tick_timer)

    def close_all(self) -> None:
        self.stop_listening()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT``, not listening.

    It never accepts anything (only listening sockets receive connections), but
    it keeps the port: ``--port 0`` resolves once, and other programs cannot bind
    it while workers restart. Raises OSError (EADDRINUSE, ...) like ``listen``.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEPORT alone (no SO_REUSEADDR): workers share the port, since they
        # set SO_REUSEPORT too, while a SO_REUSEADDR binder elsewhere cannot.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock
