"""The Redis link without sockets: a fake loop and stream stand in for the
reactor, so pipelining, failure and backoff are checked byte for byte."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wsnet.chat.loop import StreamEvents
from wsnet.chat.redis.link import Backoff, RedisLink
from wsnet.chat.redis.resp import RedisAddress, RedisError, redis_available

pytestmark = pytest.mark.skipif(not redis_available(), reason="needs hiredis (wsnet[redis])")


class FakeStream:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def flush_blocking(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


class FakeTimer:
    def __init__(self, delay: float, callback: Callable[[], object]) -> None:
        self.delay, self.callback, self.cancelled = delay, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.streams: list[tuple[str, int, StreamEvents, FakeStream]] = []
        self.timers: list[FakeTimer] = []

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(delay, callback)
        self.timers.append(timer)
        return timer

    def open_stream(
        self, host: str, port: int, protocol: StreamEvents, *, timeout: float,
    ) -> FakeStream:
        stream = FakeStream()
        self.streams.append((host, port, protocol, stream))
        return stream


class Events:
    def __init__(self) -> None:
        self.ups = 0
        self.downs: list[str] = []


def make_link(db: int = 0, backoff: Backoff | None = None) -> tuple[FakeLoop, RedisLink, Events]:
    loop, events = FakeLoop(), Events()

    def up() -> None:
        events.ups += 1

    link = RedisLink(loop, RedisAddress("127.0.0.1", 6390, db), name="test",
                     on_up=up, on_down=events.downs.append, backoff=backoff or Backoff())
    link.start()
    return loop, link, events


def test_commands_are_pipelined_and_replies_go_to_their_callbacks_in_order() -> None:
    loop, link, events = make_link()
    (host, port, _, stream), = loop.streams
    assert (host, port) == ("127.0.0.1", 6390)
    assert not link.command("PING")  # not connected yet: nothing sent
    link.stream_connected()
    assert events.ups == 1
    got: list[object] = []
    assert link.command("SET", "k", 1, callback=got.append)
    assert link.command("GET", "k", callback=got.append)
    assert bytes(stream.written) == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    )
    link.stream_data(b"+OK\r\n$1")  # replies may arrive split anywhere
    assert got == [b"OK"]
    link.stream_data(b"\r\n1\r\n")
    assert got == [b"OK", b"1"]


def test_a_database_is_selected_before_the_link_counts_as_up() -> None:
    loop, link, events = make_link(db=3)
    stream = loop.streams[0][3]
    link.stream_connected()
    assert bytes(stream.written) == b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"
    assert events.ups == 0
    link.stream_data(b"+OK\r\n")
    assert events.ups == 1


def test_losing_the_connection_fails_every_waiting_callback_and_retries_later() -> None:
    loop, link, events = make_link(backoff=Backoff(first=0.5, cap=0.5))
    link.stream_connected()
    got: list[object] = []
    link.command("GET", "a", callback=got.append)
    link.command("GET", "b", callback=got.append)
    link.stream_lost(ConnectionResetError(104, "Connection reset by peer"))
    assert len(got) == 2 and all(isinstance(r, RedisError) for r in got)
    assert events.downs == ["Connection reset by peer"]
    assert not link.up and not link.command("PING")
    (timer,) = loop.timers
    assert 0 <= timer.delay <= 0.5
    timer.callback()  # the backoff elapsed: a new stream is opened
    assert len(loop.streams) == 2


def test_a_reply_nobody_asked_for_drops_the_link() -> None:
    loop, link, events = make_link()
    link.stream_connected()
    stream = loop.streams[0][3]
    link.stream_data(b"+OK\r\n")
    assert stream.closed and events.downs == ["a reply nobody asked for"]


def test_close_cancels_the_retry_and_stays_closed() -> None:
    loop, link, _ = make_link()
    link.stream_lost(ConnectionRefusedError(111, "Connection refused"))
    (timer,) = loop.timers
    link.close()
    assert timer.cancelled
    timer.callback()  # a timer that fires anyway opens nothing
    assert len(loop.streams) == 1


def test_backoff_grows_to_its_cap_with_full_jitter() -> None:
    backoff = Backoff(first=0.1, cap=5.0)
    assert [backoff.ceiling(n) for n in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert backoff.ceiling(10) == backoff.ceiling(1000) == 5.0
    assert backoff.delay(3, uniform=lambda low, high: high) == 0.8
    assert backoff.delay(3, uniform=lambda low, high: low) == 0.0
