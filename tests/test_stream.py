"""Outbound streams (``Reactor.open_stream``) on real loopback sockets: a
connect that succeeds carries bytes both ways, a refused or unanswered one is
reported once to the stream's protocol, on a later loop turn, and what one turn
writes leaves together at its end."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from wsnet._channel import Channel
from wsnet._reactor import Reactor
from wsnet._stream import Stream

pytestmark = pytest.mark.live


class NoServer:
    def connection_made(self, sock: socket.socket, peer: tuple[str, int]) -> Channel | None:
        raise AssertionError("no listener here")

    def connection_handed(
        self, sock: socket.socket, peer: tuple[str, int], data: bytes,
    ) -> Channel | None:
        raise AssertionError("no hand-offs here")

    def tick(self) -> None: ...


class Events:
    """A stream's protocol that records what it hears."""

    def __init__(self) -> None:
        self.connected = 0
        self.data = b""
        self.lost: list[OSError | None] = []

    def stream_connected(self) -> None:
        self.connected += 1

    def stream_data(self, data: bytes) -> None:
        self.data += data

    def stream_lost(self, exc: OSError | None) -> None:
        self.lost.append(exc)


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    r = Reactor(NoServer(), flush_interval=0.05, high_water=1 << 20)
    yield r
    r.close_all()


def run_until(reactor: Reactor, done: Callable[[], object], timeout: float = 5.0) -> None:
    """Turn the reactor's loop until ``done()`` holds; fail after ``timeout``."""
    end = time.monotonic() + timeout
    reactor.run(lambda: bool(done()) or time.monotonic() > end)
    assert done(), f"not done within {timeout} s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_connected_stream_carries_bytes_both_ways(reactor: Reactor) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        events = Events()
        stream = reactor.open_stream(
            "127.0.0.1", listener.getsockname()[1], events, timeout=5,
        )
        stream.write(b"PING\r\n")  # queued before the connect completes
        run_until(reactor, lambda: events.connected)
        peer, _ = listener.accept()
        with peer:
            peer.settimeout(5)
            assert peer.recv(100) == b"PING\r\n"
            peer.sendall(b"+PONG\r\n")
            run_until(reactor, lambda: events.data == b"+PONG\r\n")
            peer.close()
            run_until(reactor, lambda: events.lost)
    assert events.connected == 1
    assert events.lost == [None]  # the peer closed: no error
    assert stream.closed


def test_a_refused_connect_is_reported_once_and_not_from_open_stream(reactor: Reactor) -> None:
    events = Events()
    stream = reactor.open_stream("127.0.0.1", free_port(), events, timeout=5)
    assert events.lost == []
    run_until(reactor, lambda: events.lost)
    [exc] = events.lost
    assert isinstance(exc, ConnectionRefusedError)
    assert events.connected == 0 and stream.closed and not stream.connected


def test_an_unanswered_connect_times_out(reactor: Reactor) -> None:
    # A listener whose accept queue is full drops further SYNs: the connect
    # neither succeeds nor fails until our timer ends it.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            events = Events()
            started = time.monotonic()
            reactor.open_stream("127.0.0.1", port, events, timeout=0.3)
            run_until(reactor, lambda: events.lost)
            [exc] = events.lost
            assert isinstance(exc, TimeoutError)
            assert time.monotonic() - started >= 0.3
            assert events.connected == 0
        finally:
            for filler in fillers:
                filler.close()


def test_close_silences_the_stream(reactor: Reactor) -> None:
    events = Events()
    stream: Stream = reactor.open_stream("127.0.0.1", free_port(), events, timeout=5)
    stream.close()
    reactor.timers.run_due(reactor.clock() + 1, on_error=lambda exc: pytest.fail(repr(exc)))
    assert events.lost == [] and stream.closed


def test_what_one_turn_writes_goes_out_together_at_its_end(reactor: Reactor) -> None:
    """A pipeline: commands written during a turn wait for its end, then leave
    in one send (a connect storm writes a Redis command per join)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        events = Events()
        stream = reactor.open_stream(
            "127.0.0.1", listener.getsockname()[1], events, timeout=5,
        )
        run_until(reactor, lambda: events.connected)
        peer, _ = listener.accept()
        with peer:
            commands = [b"PUBLISH r%d x\r\n" % i for i in range(100)]
            arrived_early: list[bool] = []

            def write_all() -> None:  # runs inside a turn, as a join would
                for command in commands:
                    stream.write(command)
                arrived_early.append(_readable(peer))

            reactor.call_later(0, write_all)
            run_until(reactor, lambda: arrived_early)
            assert arrived_early == [False]  # nothing left during the turn
            peer.settimeout(5)
            assert peer.recv(65536) == b"".join(commands)  # all of it, together


def _readable(sock: socket.socket) -> bool:
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    return True
