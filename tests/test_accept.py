"""Accepted sockets on real loopback connections: every one has TCP_NODELAY
and the configured send buffer, whether the options were set on it or, on
Linux, inherited from the listening socket (set once instead of per accept)."""

from __future__ import annotations

import socket
import time

import pytest

from wsnet._channel import Channel
from wsnet._reactor import Reactor

pytestmark = pytest.mark.live


class Recorder:
    """Refuses every connection, after noting its options."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def connection_made(self, sock: socket.socket, peer: tuple[str, int]) -> Channel | None:
        self.seen.append((
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        ))
        return None

    def connection_handed(
        self, sock: socket.socket, peer: tuple[str, int], data: bytes,
    ) -> Channel | None:
        raise AssertionError("no hand-offs here")

    def tick(self) -> None: ...


def granted_send_buffer(size: int) -> int:
    """What the kernel reports after SO_SNDBUF = size (Linux doubles it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        value: int = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        return value


@pytest.mark.parametrize("send_buffer", [48 * 1024, 0])
def test_every_accepted_socket_has_nodelay_and_the_send_buffer(send_buffer: int) -> None:
    recorder = Recorder()
    reactor = Reactor(recorder, flush_interval=0.05, high_water=1 << 20, send_buffer=send_buffer)
    try:
        _, port = reactor.listen("127.0.0.1", 0, 16)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        end = time.monotonic() + 5
        reactor.run(lambda: len(recorder.seen) == 3 or time.monotonic() > end)
        for c in clients:
            c.close()
    finally:
        reactor.close_all()
    assert len(recorder.seen) == 3
    assert all(nodelay for nodelay, _ in recorder.seen)
    if send_buffer:
        assert {sndbuf for _, sndbuf in recorder.seen} == {granted_send_buffer(send_buffer)}
    else:  # the kernel's own default: far above a set 48 KiB on loopback
        assert all(sndbuf != granted_send_buffer(48 * 1024) for _, sndbuf in recorder.seen)
