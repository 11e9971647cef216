"""A Redis connection on the reactor: non-blocking, no threads.

RESP replies are parsed by hiredis' ``Reader`` (the optional ``redis`` extra);
commands are small enough to encode here. A ``RedisLink`` either runs commands,
pipelined, each reply going to the next callback in line, or (``on_push``) is a
subscriber whose every reply is a pushed message. When the connection fails it
fails every waiting callback, says so once, and reconnects with exponential
backoff and full jitter until ``close()``.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

try:  # the optional ``redis`` extra; the core imports without it
    import hiredis
except ImportError:  # pragma: no cover - checked when a backplane starts
    hiredis = None  # type: ignore[assignment]

from wsnet._clock import Timer
from wsnet._reactor import READ, WRITE, Reactor

__all__ = ["RedisAddress", "RedisError", "RedisLink", "encode_command", "redis_available"]

log = logging.getLogger("wsnet")

Reply = Any  # bytes | int | list | None | RedisError, as hiredis builds them
Callback = Callable[[Reply], None]

_CONNECT_TIMEOUT = 5.0
_BACKOFF_FIRST = 0.1
_BACKOFF_CAP = 5.0


class RedisError(Exception):
    """An error reply, or the connection failing under a command."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str
    port: int
    db: int

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """``redis://host[:port][/db]``; ValueError says what is wrong."""
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError(f"not a redis://host:port/db URL: {url!r}")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"the database in {url!r} must be a number")
        return cls(parts.hostname, parts.port or 6379, int(path or 0))

    def __str__(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


def encode_command(*args: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def redis_available() -> bool:
    """Is the parser of the optional ``redis`` extra installed?"""
    return hiredis is not None


def _reader() -> Any:
    if hiredis is None:
        raise RuntimeError("the Redis backplane needs hiredis: pip install 'wsnet[redis]'")
    return hiredis.Reader(replyError=RedisError)


class RedisLink:
    """One Redis connection, reconnecting on its own."""

    def __init__(
        self,
        reactor: Reactor,
        address: RedisAddress,
        *,
        name: str,
        on_up: Callable[[], None],
        on_down: Callable[[str], None],
        on_push: Callable[[Reply], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.address = address
        self.name = name
        self.on_up = on_up
        self.on_down = on_down
        self.on_push = on_push
        self.up = False
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._out = bytearray()
        self._waiting: deque[Callback | None] = deque()
        self._timer: Timer | None = None
        self._attempt = 0
        self._closed = False
        self._was_up = True  # so that the first failure is logged

    # -- public --------------------------------------------------------------

    def start(self) -> None:
        self._connect()

    def command(self, *args: bytes | str | int, callback: Callback | None = None) -> bool:
        """Send one command; False (nothing sent, callback not called) when down."""
        if not self.up:
            return False
        self._out += encode_command(*args)
        if self.on_push is None:  # a subscriber's replies are all pushes
            self._waiting.append(callback)
        self._write()
        return True

    def flush_blocking(self, timeout: float) -> None:
        """Write what is queued, waiting up to ``timeout`` (for shutdown only)."""
        sock = self._sock
        if sock is None or not self.up or not self._out:
            return
        try:
            sock.settimeout(timeout)
            sock.sendall(self._out)
            self._out.clear()
        except OSError:
            pass
        finally:
            sock.setblocking(False)

    def close(self) -> None:
        self._closed = True
        self.reactor.cancel(self._timer)
        self._drop("closed")

    # -- connection ----------------------------------------------------------

    def _connect(self) -> None:
        self._timer = None
        if self._closed:
            return
        addr = self.address
        try:
            infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM)
            family, _, _, _, sockaddr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            self._failed(f"cannot resolve {addr.host}: {exc}")
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(sockaddr)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self._failed(f"connect: {errno.errorcode.get(code, code)}")
            return
        self._sock = sock
        self._reader = _reader()
        self.reactor.watch(sock, WRITE, self._on_connected)
        self._timer = self.reactor.call_later(_CONNECT_TIMEOUT, self._connect_timed_out)

    def _connect_timed_out(self) -> None:
        self._timer = None
        if self._sock is not None and not self.up:
            self._drop("connect timed out")

    def _on_connected(self) -> None:
        sock = self._sock
        assert sock is not None
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._drop(f"connect: {errno.errorcode.get(code, code)}")
            return
        self.reactor.cancel(self._timer)
        self._timer = None
        self.up = True
        self._attempt = 0
        self.reactor.watch(sock, READ, self._on_ready)
        if self.address.db and self.on_push is None:
            self.command("SELECT", self.address.db, callback=self._selected)
        else:
            self._became_up()

    def _selected(self, reply: Reply) -> None:
        if isinstance(reply, RedisError):
            self._drop(f"SELECT {self.address.db}: {reply}")
        else:
            self._became_up()

    def _became_up(self) -> None:
        log.info("redis %s: connected to %s", self.name, self.address)
        self._was_up = True
        self.on_up()

    def _drop(self, reason: str) -> None:
        """Forget the socket, fail what waited on it, and plan the next try."""
        sock, self._sock = self._sock, None
        if sock is not None:
            self.reactor.unwatch(sock)
            sock.close()
        was_up, self.up = self.up, False
        self._out.clear()
        waiting, self._waiting = self._waiting, deque()
        failure = RedisError(f"connection lost: {reason}")
        for callback in waiting:
            if callback is not None:
                callback(failure)
        if was_up:
            self.on_down(reason)
        self._failed(reason)

    def _failed(self, reason: str) -> None:
        if self._closed:
            return
        ceiling = min(_BACKOFF_CAP, _BACKOFF_FIRST * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 16)
        delay = random.uniform(0, ceiling)
        if self._was_up:  # one line per outage, not one per attempt
            log.warning("redis %s: %s; reconnecting (backoff up to %.0f s)",
                        self.name, reason, _BACKOFF_CAP)
            self._was_up = False
        self._timer = self.reactor.call_later(delay, self._connect)

    # -- I/O -----------------------------------------------------------------

    def _write(self) -> None:
        sock = self._sock
        if sock is None or not self._out:
            return
        try:
            sent = sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._drop(f"send: {exc.strerror or exc}")
            return
        del self._out[:sent]
        self.reactor.watch(sock, READ | WRITE if self._out else READ, self._on_ready)

    def _on_ready(self) -> None:
        if self._out:
            self._write()
        sock = self._sock
        while sock is not None and sock is self._sock:
            try:
                data = sock.recv(256 * 1024)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._drop(f"recv: {exc.strerror or exc}")
                return
            if not data:
                self._drop("closed by the server")
                return
            self._reader.feed(data)
            self._dispatch()

    def _dispatch(self) -> None:
        reader = self._reader
        while self._sock is not None:
            reply = reader.gets()
            if reply is False:
                return
            if self.on_push is not None:
                try:
                    self.on_push(reply)
                except Exception:
                    log.exception("redis %s: error in a message handler", self.name)
                continue
            if not self._waiting:
                self._drop("a reply nobody asked for")
                return
            callback = self._waiting.popleft()
            if callback is not None:
                try:
                    callback(reply)
                except Exception:
                    log.exception("redis %s: error in a reply handler", self.name)
