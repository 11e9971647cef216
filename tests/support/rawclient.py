"""A blocking raw-socket WebSocket client (every read has a deadline), and plain
HTTP requests, for the tests that need to see or break the bytes on the wire.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable

from wsproto.frame_protocol import FrameProtocol

from support.wire import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    Frame,
    HttpResponse,
    expected_accept,
    parse_frame,
    parse_http_head,
    upgrade_request,
)


class ConnectionEnded(Exception):
    """The peer closed (or reset) the TCP connection."""


class RawClient:
    """A blocking socket with a receive buffer; every read has a deadline."""

    def __init__(
        self,
        port: int,
        *,
        rcvbuf: int | None = None,
        timeout: float = 5.0,
        sock: socket.socket | None = None,
    ) -> None:
        """Connect to 127.0.0.1:port, or wrap ``sock`` (already connected)."""
        self.port = port
        self.timeout = timeout
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf is not None:
                # Before connect, so the window scale is negotiated for it.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            sock.connect(("127.0.0.1", port))
        self.sock = sock
        self.buf = b""
        self.eof = False
        #: wsproto as the client-side encoder of valid, masked frames.
        self.encoder = FrameProtocol(client=True, extensions=[])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bytes ---------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        """Read once more; raise ConnectionEnded at EOF, TimeoutError at deadline."""
        if self.eof:
            raise ConnectionEnded
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data before the deadline")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(256 * 1024)
        except TimeoutError:
            raise TimeoutError("no data before the deadline") from None
        except ConnectionResetError:
            self.eof = True
            raise ConnectionEnded from None
        if not chunk:
            self.eof = True
            raise ConnectionEnded
        self.buf += chunk

    def read_until_eof(self, timeout: float | None = None) -> bytes:
        """Everything until the peer closes; TimeoutError if it does not."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with contextlib.suppress(ConnectionEnded):
            while True:
                self._fill(deadline)
        data, self.buf = self.buf, b""
        return data

    def wait_eof(self, timeout: float) -> bool:
        """Did the peer close within ``timeout`` (data read meanwhile is kept)?"""
        try:
            self.read_until_eof(timeout)
        except TimeoutError:
            return False
        return True

    # -- HTTP ------------------------------------------------------------------

    def read_http_head(self, timeout: float | None = None) -> tuple[int, dict[str, str]]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return parse_http_head(head)

    def handshake(
        self,
        path: str = "/",
        *,
        extensions: str | None = None,
        eager: bytes = b"",
    ) -> dict[str, str]:
        """Upgrade (with ``eager`` bytes in the same write); assert 101."""
        key = base64.b64encode(os.urandom(16)).decode()
        request = upgrade_request(self.port, path, key=key, extensions=extensions)
        self.send(request + eager)
        status, headers = self.read_http_head()
        assert status == 101, (status, headers, self.buf)
        assert headers["sec-websocket-accept"] == expected_accept(key)
        return headers

    # -- frames ----------------------------------------------------------------

    def recv_frame(self, timeout: float | None = None) -> Frame:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            parsed = parse_frame(self.buf)
            if parsed is not None:
                frame, used = parsed
                self.buf = self.buf[used:]
                assert not frame.masked, "server frames must not be masked"
                return frame
            self._fill(deadline)

    def recv_data_frame(self, timeout: float | None = None) -> Frame:
        """The next text/binary/close frame, skipping pings and pongs."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if frame.opcode not in (OP_PING, OP_PONG):
                return frame

    def recv_close(self, timeout: float | None = None) -> Frame:
        """Frames until a close frame; fails if the connection ends without one."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            frame = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if frame.opcode == OP_CLOSE:
                return frame

    def send_text(self, text: str) -> None:
        self.send(bytes(self.encoder.send_data(text, fin=True)))


def http_get(
    port: int, path: str, *, method: str = "GET", timeout: float = 5.0,
) -> HttpResponse:
    """One plain HTTP request asking to close; reads until the server does."""
    with RawClient(port, timeout=timeout) as client:
        client.send(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            .encode(),
        )
        return read_response(client, timeout)


def healthz(port: int, timeout: float = 5.0) -> dict[str, object]:
    """``GET /healthz``, which must answer 200 with a JSON object."""
    response = http_get(port, "/healthz", timeout=timeout)
    assert response.status == 200, response
    body = json.loads(response.body)
    assert isinstance(body, dict), body
    return body


def read_response(client: RawClient, timeout: float = 5.0) -> HttpResponse:
    data = client.read_until_eof(timeout)
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:200]!r}"
    status, headers = parse_http_head(head)
    if "content-length" in headers:
        assert len(body) == int(headers["content-length"]), (len(body), headers)
    return HttpResponse(status, headers, body)


#: ``raw_client(port, rcvbuf=None)``: the conftest fixture's type.
RawClientFactory = Callable[..., RawClient]
