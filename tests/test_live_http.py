"""Plain HTTP on real sockets: keep-alive, pipelining, and answers an
application gives later (``wsnet.Pending``), on an in-process server. The
reader itself is tested without sockets in tests/test_http_body.py."""

from __future__ import annotations

import time

import pytest
from support.rawclient import RawClient
from support.servers import InProcessFactory

import wsnet

pytestmark = pytest.mark.live


class Later(wsnet.Handler):
    """``/later`` is answered 0.2 s after it arrives; ``/never`` is not answered."""

    def on_http(self, request: wsnet.Request) -> wsnet.Response | wsnet.Pending | None:
        if request.path == "/never":
            return wsnet.Pending()
        if request.path == "/later":
            pending = wsnet.Pending()
            body = request.body.decode() or "empty"
            self.server.call_later(0.2, lambda: pending.answer(wsnet.Response.text(200, body)))
            return pending
        return None


def responses(client: RawClient, count: int, timeout: float = 5.0) -> list[tuple[int, bytes]]:
    """Read ``count`` complete responses (by Content-Length) off one connection."""
    deadline = time.monotonic() + timeout
    data = b""
    out: list[tuple[int, bytes]] = []
    while len(out) < count:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode("latin-1").split("\r\n")
            length = next(int(v) for k, _, v in (h.partition(": ") for h in lines[1:])
                          if k.lower() == "content-length")
            if len(rest) >= length:
                out.append((int(lines[0].split()[1]), rest[:length]))
                data = rest[length:]
                continue
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(out)} of {count} responses"
        client.sock.settimeout(remaining)
        chunk = client.sock.recv(65536)
        assert chunk, f"closed after {len(out)} of {count} responses"
        data += chunk
    return out


def test_pipelined_requests_are_answered_in_order_on_one_connection(
    inprocess_server: InProcessFactory,
) -> None:
    server = inprocess_server(Later())
    with RawClient(server.port, timeout=5) as client:
        client.send(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        got = responses(client, 4)
        assert [status for status, _ in got] == [200, 200, 404, 200]
        assert got[1][1] == b"hello\n"  # answered later, still in its place
        assert client.read_until_eof(timeout=5) == b""  # the last one asked to close


def test_an_answer_that_never_comes_is_a_503_at_the_handshake_timeout(
    inprocess_server: InProcessFactory,
) -> None:
    server = inprocess_server(Later(), handshake_timeout=0.5)
    with RawClient(server.port, timeout=5) as client:
        started = time.monotonic()
        client.send(b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
        data = client.read_until_eof(timeout=5)
        assert data.startswith(b"HTTP/1.1 503 ")
        assert 0.4 < time.monotonic() - started < 3


def test_an_idle_kept_alive_connection_is_closed_at_the_handshake_timeout(
    inprocess_server: InProcessFactory,
) -> None:
    server = inprocess_server(Later(), handshake_timeout=0.5)
    with RawClient(server.port, timeout=5) as client:
        client.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [s for s, _ in responses(client, 1)] == [200]
        started = time.monotonic()
        assert client.read_until_eof(timeout=5) == b""
        assert 0.4 < time.monotonic() - started < 3
