"""One Redis connection on the server's loop: pipelined commands, or pushes.

A ``RedisLink`` either runs commands, pipelined, each reply going to the next
callback in line, or (``on_push``) is a subscriber whose every reply is a pushed
message. Its bytes travel through a stream the loop opens (``Loop.open_stream``):
the link itself only encodes, parses and keeps the reply queue, so it is tested
with a fake loop and no sockets. When the connection fails it fails every
waiting callback, says so once, and reconnects after ``Backoff.delay``.
"""

from __future__ import annotations

import errno
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wsnet.chat.loop import ByteStream, Cancellable, Loop
from wsnet.chat.redis.resp import RedisAddress, RedisError, Reply, encode_command, new_reader

__all__ = ["Backoff", "RedisLink"]

log = logging.getLogger("wsnet")

Callback = Callable[[Reply], None]

_CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` waits a uniform
    random time below ``min(cap, first * 2**n)``, so that many nodes losing
    one Redis do not all come back in the same instant."""

    first: float = 0.1
    cap: float = 5.0
    max_attempt: int = 16

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.first * 2.0 ** min(attempt, self.max_attempt))

    def delay(
        self, attempt: int, uniform: Callable[[float, float], float] = random.uniform,
    ) -> float:
        return uniform(0, self.ceiling(attempt))


class RedisLink:
    """One Redis connection, reconnecting on its own."""

    def __init__(
        self,
        loop: Loop,
        address: RedisAddress,
        *,
        name: str,
        on_up: Callable[[], None],
        on_down: Callable[[str], None],
        on_push: Callable[[Reply], None] | None = None,
        backoff: Backoff = Backoff(),
    ) -> None:
        self.loop = loop
        self.address = address
        self.name = name
        self.on_up = on_up
        self.on_down = on_down
        self.on_push = on_push
        self.backoff = backoff
        self.up = False
        self._stream: ByteStream | None = None
        self._reader: Any = None
        self._waiting: deque[Callback | None] = deque()
        self._timer: Cancellable | None = None
        self._attempt = 0
        self._closed = False
        self._was_up = True  # so that the first failure is logged

    # -- public --------------------------------------------------------------

    def start(self) -> None:
        self._connect()

    def command(self, *args: bytes | str | int, callback: Callback | None = None) -> bool:
        """Send one command; False (nothing sent, callback not called) when down."""
        stream = self._stream
        if not self.up or stream is None:
            return False
        if self.on_push is None:  # a subscriber's replies are all pushes
            self._waiting.append(callback)
        stream.write(encode_command(*args))
        return True

    def flush_blocking(self, timeout: float) -> None:
        """Write what is queued, waiting up to ``timeout`` (for shutdown only)."""
        if self._stream is not None and self.up:
            self._stream.flush_blocking(timeout)

    def close(self) -> None:
        self._closed = True
        self._cancel_timer()
        self._drop("closed")

    # -- the stream's events -------------------------------------------------

    def stream_connected(self) -> None:
        self.up = True
        self._attempt = 0
        if self.address.db and self.on_push is None:
            self.command("SELECT", self.address.db, callback=self._selected)
        else:
            self._became_up()

    def stream_data(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        stream = self._stream
        while self._stream is stream and stream is not None:
            reply = reader.gets()
            if reply is False:
                return
            self._dispatch(reply)

    def stream_lost(self, exc: OSError | None) -> None:
        self._stream = None  # already closed by the loop
        if exc is None:
            self._drop("closed by the server")
        elif isinstance(exc, TimeoutError):
            self._drop("connect timed out")
        elif exc.errno is not None and not self.up:
            self._drop(f"connect: {errno.errorcode.get(exc.errno, exc.errno)}")
        else:
            self._drop(f"{exc.strerror or exc}")

    # -- private -------------------------------------------------------------

    def _connect(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._reader = new_reader()
        addr = self.address
        self._stream = self.loop.open_stream(addr.host, addr.port, self, timeout=_CONNECT_TIMEOUT)

    def _dispatch(self, reply: Reply) -> None:
        if self.on_push is not None:
            try:
                self.on_push(reply)
            except Exception:
                log.exception("redis %s: error in a message handler", self.name)
            return
        if not self._waiting:
            self._drop("a reply nobody asked for")
            return
        callback = self._waiting.popleft()
        if callback is not None:
            try:
                callback(reply)
            except Exception:
                log.exception("redis %s: error in a reply handler", self.name)

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
        """Forget the stream, fail what waited on it, and plan the next try."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        was_up, self.up = self.up, False
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
        delay = self.backoff.delay(self._attempt)
        self._attempt = min(self._attempt + 1, self.backoff.max_attempt)
        if self._was_up:  # one line per outage, not one per attempt
            log.warning("redis %s: %s; reconnecting (backoff up to %.0f s)",
                        self.name, reason, self.backoff.cap)
            self._was_up = False
        self._timer = self.loop.call_later(delay, self._connect)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
