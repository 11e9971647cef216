"""Closed connections leave no reference cycles: refcounting frees them at once,
and the cyclic collector (whose pauses stall the one loop) finds nothing of
ours. An in-process chat server; the clients are raw sockets."""

from __future__ import annotations

import base64
import gc
import os
import socket
import time
from collections import Counter

import pytest
from support.rawclient import http_get
from support.servers import InProcessFactory, ServerFactory
from support.waiting import wait_for

from wsnet.chat import ChatApp

pytestmark = pytest.mark.live

OURS = ("wsnet", "wsproto", "h11")


def upgrade(port: int, i: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /?name=u{i}&room=r{i % 10} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .encode(),
    )
    assert sock.recv(12) == b"HTTP/1.1 101"
    return sock


def test_closed_connections_leave_no_cyclic_garbage(inprocess_server: InProcessFactory) -> None:
    gc.collect()  # what earlier tests left is not this test's business
    server = inprocess_server(ChatApp(), flush_interval=0.01)
    socks = [upgrade(server.port, i) for i in range(300)]
    wait_for("every client welcomed", lambda: server.server.statistics()["connections"] == 300)
    for sock in socks:  # gone without a close frame: the server sees EOF (1006)
        sock.close()
    wait_for("every client gone", lambda: server.server.statistics()["connections"] == 0)
    time.sleep(0.2)  # the loop finishes its turn over the closed sockets
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        ours = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
                       if type(o).__module__.split(".")[0] in OURS)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()
    assert ours == Counter(), ours.most_common(5)


def frozen(port: int) -> float:
    response = http_get(port, "/metrics")
    line = next(line for line in response.body.decode().splitlines()
                if line.startswith("wsnet_gc_frozen_objects "))
    return float(line.split()[1])


@pytest.mark.parametrize("freeze", [True, False])
def test_a_burst_of_connections_is_frozen_out_of_the_collectors_way(
    server_factory: ServerFactory, freeze: bool,
) -> None:
    server = server_factory(*(["--gc-freeze"] if freeze else []))
    socks = [upgrade(server.port, i) for i in range(1100)]
    try:
        if freeze:
            # Past 1,000 accepts and a quiet second, the next tick freezes them.
            wait_for("the freeze", lambda: frozen(server.port) > 1100 * 10, timeout=10)
        else:
            time.sleep(1.5)  # the same quiet second: nothing must happen
            assert frozen(server.port) == 0
    finally:
        for sock in socks:
            sock.close()
    assert http_get(server.port, "/healthz").status == 200
