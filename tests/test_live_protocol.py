"""Protocol edges on a live server: refused upgrades, eager first frames, the echo
app, message limits, protocol violations, and the handshake and keepalive timers.

Raw sockets write exactly the bytes under test (wsproto encodes the valid masked
frames); the ``websockets`` client is the independent, well-behaved peer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.chat import recv_json, run, ws_connect
from support.rawclient import RawClient, RawClientFactory, read_response
from support.servers import ServerFactory, ServerProcess, ThreadedServer, start_server
from support.wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    build_frame,
    parse_frames,
    upgrade_request,
)
from websockets.exceptions import ConnectionClosed

from wsnet.chat import ChatApp

pytestmark = pytest.mark.live

InProcessFactory = Callable[..., ThreadedServer]


@pytest.fixture(scope="module")
def shared_chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One chat server for the stateless refused-upgrade checks."""
    server = start_server([], tmp_path_factory.mktemp("shared") / "server.stderr")
    yield server
    assert server.terminate_and_wait() == 0
    assert "Traceback" not in server.stderr_text()


def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> tuple[int, dict[str, str]]:
    """Send bytes in one write; return the response status and headers."""
    with RawClient(port, timeout=timeout) as client:
        client.send(data)
        response = read_response(client, timeout)
    return response.status, response.headers


# ----------------------------------------------------------------------------
# Refused upgrades
# ----------------------------------------------------------------------------


def _request(port: int, **kwargs: Any) -> bytes:
    return upgrade_request(port, **kwargs)


def _without(request: bytes, header: bytes) -> bytes:
    lines = request.split(b"\r\n")
    return b"\r\n".join(line for line in lines if not line.lower().startswith(header.lower()))


BAD_UPGRADES: list[tuple[str, Callable[[int], bytes], int]] = [
    ("garbage-line", lambda port: b"NOT HTTP AT ALL\r\n\r\n", 400),
    ("binary-garbage", lambda port: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ("bad-header-line", lambda port: b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
    ("wrong-version", lambda port: _request(port, version="8"), 426),
    ("post-upgrade", lambda port: _request(port, method="POST"), 405),
    ("put-upgrade", lambda port: _request(port, method="PUT"), 405),
    ("unknown-path", lambda port: _request(port, path="/elsewhere"), 404),
    ("key-not-16-bytes", lambda port: _request(port, key="c2hvcnQ="), 400),
    ("key-not-base64", lambda port: _request(port, key="!!!!!!!!!!!!!!!!!!!!!!=="), 400),
    ("missing-key", lambda port: _without(_request(port), b"Sec-WebSocket-Key"), 400),
    (
        "no-connection-upgrade",
        lambda port: _without(_request(port), b"Connection:").replace(
            b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n",
        ),
        400,
    ),
    (
        "upgrade-with-body",
        lambda port: _request(port, extra_headers=(("Content-Length", "5"),)) + b"hello",
        400,
    ),
    (
        "upgrade-chunked",
        lambda port: _request(port, extra_headers=(("Transfer-Encoding", "chunked"),))
        + b"0\r\n\r\n",
        400,
    ),
    (
        "http-1.0",
        lambda port: _request(port).replace(b"GET / HTTP/1.1", b"GET / HTTP/1.0", 1),
        400,
    ),
    (
        "huge-headers-20k-one-write",
        lambda port: _request(port, extra_headers=(("X-Big", "a" * 20_000),)),
        431,
    ),
    (
        "huge-headers-100k-one-write",
        lambda port: _request(port, extra_headers=(("X-Big", "a" * 100_000),)),
        431,
    ),
]


@pytest.mark.parametrize(
    ("request_for", "status"),
    [pytest.param(build, status, id=name) for name, build, status in BAD_UPGRADES],
)
def test_bad_upgrade_requests_get_exact_statuses(
    shared_chat: ServerProcess, request_for: Callable[[int], bytes], status: int,
) -> None:
    got, headers = exchange(shared_chat.port, request_for(shared_chat.port))
    assert got == status, headers
    assert headers["connection"].lower() == "close"
    if status == 426:
        assert headers["sec-websocket-version"] == "13"
    if status == 405:
        assert "GET" in headers["allow"]


def test_huge_headers_arriving_in_pieces_get_431_before_the_end(shared_chat: ServerProcess) -> None:
    """17 KiB of a head that has not ended yet is already past the 16 KiB limit."""
    request = _request(shared_chat.port, extra_headers=(("X-Big", "a" * 20_000),))
    with RawClient(shared_chat.port) as client:
        client.send(request[:17 * 1024])  # no blank line yet
        status, _headers = client.read_http_head()
    assert status == 431


def test_oversized_but_complete_head_in_one_read_gets_431(
    inprocess_server: InProcessFactory, raw_client: RawClientFactory,
) -> None:
    """h11 bounds only incomplete heads; a whole oversized head must be refused too.
    (Found failing at 0f9ddf8, fixed in d751489.)"""
    # A small limit makes "one read" certain: 2 KB in one write is one segment.
    server = inprocess_server(ChatApp(), max_header_bytes=1024, flush_interval=0.01)
    request = _request(server.port, extra_headers=(("X-Big", "a" * 1500),))
    assert 1024 < len(request) < 4096
    client: RawClient = raw_client(server.port)
    client.send(request)
    status, _headers = client.read_http_head()
    assert status == 431


# ----------------------------------------------------------------------------
# An eager first frame right behind the upgrade request
# ----------------------------------------------------------------------------


def test_eager_first_frame_in_the_upgrade_write_is_not_lost(
    chat_server: ServerProcess, raw_client: RawClientFactory,
) -> None:
    client: RawClient = raw_client(chat_server.port)
    eager = bytes(client.encoder.send_data("eager hello", fin=True))
    client.handshake("/?name=eager", eager=eager)
    texts: list[str] = []
    deadline = time.monotonic() + 5
    while "eager hello" not in texts:
        frame = client.recv_data_frame(max(0.01, deadline - time.monotonic()))
        assert frame.opcode == OP_TEXT, frame
        for event in json.loads(frame.payload):
            if event["type"] == "message":
                assert event["from"] == "eager"
                texts.append(event["text"])
    assert texts == ["eager hello"]


def test_eager_frames_reach_the_echo_app(
    echo_server: ServerProcess, raw_client: RawClientFactory,
) -> None:
    client: RawClient = raw_client(echo_server.port)
    eager = bytes(client.encoder.send_data("first", fin=True))
    eager += bytes(client.encoder.send_data(b"\x00second\xff", fin=True))
    eager += bytes(client.encoder.ping(b"are you there"))
    client.handshake(eager=eager)
    frames = [client.recv_frame() for _ in range(3)]
    by_kind = {(f.opcode, f.payload) for f in frames}
    assert by_kind == {(OP_TEXT, b"first"), (OP_BINARY, b"\x00second\xff"),
                       (0xA, b"are you there")}
    # Data keeps its order.
    data = [f for f in frames if f.opcode in (OP_TEXT, OP_BINARY)]
    assert [f.payload for f in data] == [b"first", b"\x00second\xff"]


def test_large_eager_frame_behind_the_request_is_not_counted_as_header(
    echo_server: ServerProcess, raw_client: RawClientFactory,
) -> None:
    """100 KiB of frame data in the same write as a small head: the head is within
    the 16 KiB limit, the bytes behind it belong to the WebSocket."""
    client: RawClient = raw_client(echo_server.port)
    big = "e" * (100 * 1024)
    eager = bytes(client.encoder.send_data(big, fin=True))
    client.handshake(eager=eager)
    frame = client.recv_frame()
    assert frame.opcode == OP_TEXT and frame.payload == big.encode()


# ----------------------------------------------------------------------------
# The echo app
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_echo_text_binary_fragmented_and_1mib(
    echo_server: ServerProcess, compression: str | None,
) -> None:
    mib = 1 << 20
    big_text = ("0123456789abcdef" * (mib // 16))[:mib]
    big_binary = os.urandom(mib)
    assert len(big_text.encode()) == len(big_binary) == mib

    async def scenario() -> None:
        async with ws_connect(
            echo_server.url, compression=compression, max_size=4 * mib,
        ) as ws:
            for message in ("hello", "ünïcødé ✓ 🚀", b"\x00\x01\x02\xff", "", b""):
                await ws.send(message)
                assert await asyncio.wait_for(ws.recv(), 5) == message
            # Fragmented: the server reassembles, the echo is one message.
            await ws.send(["frag", "men", "ted ✓"])
            assert await asyncio.wait_for(ws.recv(), 5) == "fragmented ✓"
            await ws.send([b"\x01\x02", b"", b"\x03"])
            assert await asyncio.wait_for(ws.recv(), 5) == b"\x01\x02\x03"
            for message in (big_text, big_binary):
                await ws.send(message)
                echoed = await asyncio.wait_for(ws.recv(), 10)
                assert type(echoed) is type(message)
                assert echoed == message

    run(scenario(), timeout=40)


# ----------------------------------------------------------------------------
# Limits and violations
# ----------------------------------------------------------------------------


def test_oversize_message_is_closed_1009(server_factory: ServerFactory) -> None:
    server = server_factory("--app", "echo", "--max-message-bytes", "1000")

    async def closed_with(message: str | bytes | list[str], **options: Any) -> int | None:
        async with ws_connect(server.url, **options) as ws:
            await ws.send(message)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            await asyncio.wait_for(ws.wait_closed(), 5)
            return ws.close_code

    async def scenario() -> None:
        async with ws_connect(server.url, compression=None) as ws:
            await ws.send("x" * 1000)  # exactly the limit: fine
            assert await asyncio.wait_for(ws.recv(), 5) == "x" * 1000
            await ws.send("é" * 500)  # 1000 bytes of UTF-8
            assert await asyncio.wait_for(ws.recv(), 5) == "é" * 500
        assert await closed_with("x" * 1001, compression=None) == 1009
        assert await closed_with(b"\x00" * 1001, compression=None) == 1009
        assert await closed_with("é" * 501, compression=None) == 1009  # 1002 bytes
        # Fragments count together.
        assert await closed_with(["x" * 600, "y" * 401], compression=None) == 1009
        # A few hundred compressed bytes that inflate far past the limit.
        assert await closed_with("a" * 200_000) == 1009

    run(scenario())


def test_invalid_utf8_is_closed_1007(
    chat_server: ServerProcess, raw_client: RawClientFactory,
) -> None:
    client: RawClient = raw_client(chat_server.port)
    client.handshake()
    client.send(build_frame(OP_TEXT, b"ok \xff\xfe"))
    assert client.recv_close().close_code == 1007
    assert client.wait_eof(5), "the server should end the connection after failing it"


def test_invalid_utf8_across_fragments_is_closed_1007(
    chat_server: ServerProcess, raw_client: RawClientFactory,
) -> None:
    client: RawClient = raw_client(chat_server.port)
    client.handshake()
    # "\xce" starts a 2-byte sequence; "\x41" cannot continue it.
    client.send(build_frame(OP_TEXT, b"abc\xce", fin=False) + build_frame(OP_CONT, b"\x41"))
    assert client.recv_close().close_code == 1007


def test_unmasked_client_frame_is_closed_1002(
    chat_server: ServerProcess, raw_client: RawClientFactory,
) -> None:
    client: RawClient = raw_client(chat_server.port)
    client.handshake()
    client.send(build_frame(OP_TEXT, b"naked", mask=False))
    assert client.recv_close().close_code == 1002
    assert client.wait_eof(5)


def test_client_close_is_echoed_and_connection_ends(
    chat_server: ServerProcess, raw_client: RawClientFactory,
) -> None:
    client: RawClient = raw_client(chat_server.port)
    client.handshake()
    client.send(build_frame(OP_CLOSE, (4000).to_bytes(2, "big") + b"bye"))
    assert client.recv_close().close_code == 4000
    assert client.wait_eof(5)
    # An empty close (no status) is answered without a status too, never with 1005.
    other: RawClient = raw_client(chat_server.port)
    other.handshake()
    other.send(build_frame(OP_CLOSE, b""))
    reply = other.recv_close()
    assert reply.close_code in (None, 1000), reply


# ----------------------------------------------------------------------------
# Timers: handshake timeout and keepalive (in-process servers with short timers)
# ----------------------------------------------------------------------------


def test_handshake_timeout_drops_an_unfinished_request(
    inprocess_server: InProcessFactory, raw_client: RawClientFactory,
) -> None:
    server = inprocess_server(ChatApp(), handshake_timeout=0.5, flush_interval=0.01)
    silent: RawClient = raw_client(server.port)
    partial: RawClient = raw_client(server.port)
    start = time.monotonic()
    partial.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
    assert partial.wait_eof(5), "an unfinished request must be dropped"
    assert silent.wait_eof(5), "a connection that says nothing must be dropped"
    elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 3.0, elapsed

    # A finished handshake cancels the timer: the WebSocket outlives it.
    upgraded: RawClient = raw_client(server.port)
    upgraded.handshake()
    assert not upgraded.wait_eof(1.0), "an upgraded connection was dropped by the timer"
    upgraded.send_text("after the timeout")
    texts: list[str] = []
    deadline = time.monotonic() + 5
    while "after the timeout" not in texts:
        frame = upgraded.recv_data_frame(max(0.01, deadline - time.monotonic()))
        texts += [e.get("text") for e in json.loads(frame.payload)]


def test_unanswered_server_close_is_dropped_after_close_timeout(
    inprocess_server: InProcessFactory, raw_client: RawClientFactory,
) -> None:
    server = inprocess_server(ChatApp(), close_timeout=0.5, flush_interval=0.01)
    client: RawClient = raw_client(server.port)
    client.handshake()
    client.send(build_frame(OP_BINARY, b"not chat"))
    assert client.recv_close().close_code == 1003
    start = time.monotonic()
    # We never answer the close: the server waits close_timeout, then drops us.
    assert client.wait_eof(5)
    assert 0.3 <= time.monotonic() - start < 3.0


def test_keepalive_closes_a_client_that_never_answers_pings(
    inprocess_server: InProcessFactory, raw_client: RawClientFactory,
) -> None:
    server = inprocess_server(
        ChatApp(), ping_interval=0.3, ping_timeout=0.3, flush_interval=0.01,
    )
    mute: RawClient = raw_client(server.port)
    mute.handshake()
    start = time.monotonic()
    pings: list[bytes] = []
    deadline = start + 5
    while True:
        frame = mute.recv_frame(max(0.01, deadline - time.monotonic()))
        if frame.opcode == OP_PING:
            pings.append(frame.payload)
        elif frame.opcode == OP_CLOSE:
            break
    elapsed = time.monotonic() - start
    assert pings, "the server never pinged"
    assert frame.close_code == 1011
    assert elapsed >= 0.5, f"closed after {elapsed:.2f}s, before interval + timeout"
    assert mute.wait_eof(5)


def _opcodes_while_a_peer_talks(
    talker: RawClient, listener: RawClient, seconds: float,
) -> list[int]:
    """What ``listener`` receives while ``talker`` sends a message every 0.1 s,
    up to its first ping (unanswered, it would soon be closed)."""
    opcodes: list[int] = []
    talk_until = time.monotonic() + seconds
    while time.monotonic() < talk_until:
        talker.send_text("news")
        end = time.monotonic() + 0.1
        while (left := end - time.monotonic()) > 0:
            try:
                opcodes.append(listener.recv_frame(left).opcode)
            except TimeoutError:
                break
            if opcodes[-1] == OP_PING:
                return opcodes
    return opcodes


def test_keepalive_does_not_ping_a_client_that_keeps_talking(
    inprocess_server: InProcessFactory, raw_client: RawClientFactory,
) -> None:
    server = inprocess_server(
        ChatApp(), ping_interval=0.3, ping_timeout=0.3, flush_interval=0.01,
    )
    chatty: RawClient = raw_client(server.port)
    chatty.handshake()
    opcodes = _opcodes_while_a_peer_talks(chatty, chatty, 1.5)  # five intervals
    assert OP_PING not in opcodes and opcodes.count(OP_TEXT) >= 10
    # Silent now: within an interval or two it is pinged again.
    deadline = time.monotonic() + 2
    while chatty.recv_frame(max(0.01, deadline - time.monotonic())).opcode != OP_PING:
        pass  # the echoes still in flight; recv_frame fails at the deadline


def _forwarded_handshake(client: RawClient, port: int) -> None:
    client.send(upgrade_request(port, extra_headers=[("X-Forwarded-For", "198.51.100.7")]))
    status, _ = client.read_http_head()
    assert status == 101


@pytest.mark.skipif(sys.platform != "linux", reason="acknowledgements are read with SIOCOUTQ")
def test_keepalive_does_not_ping_a_client_that_takes_what_it_is_sent(
    inprocess_server: InProcessFactory, raw_client: RawClientFactory,
) -> None:
    server = inprocess_server(
        ChatApp(), ping_interval=0.3, ping_timeout=0.3, flush_interval=0.01,
    )
    talker: RawClient = raw_client(server.port)
    talker.handshake()
    listener: RawClient = raw_client(server.port)  # reads everything, never writes
    listener.handshake()
    opcodes = _opcodes_while_a_peer_talks(talker, listener, 1.5)  # five intervals
    assert OP_PING not in opcodes and opcodes.count(OP_TEXT) >= 10
    # Sent nothing now: within an interval or two it is pinged.
    deadline = time.monotonic() + 2
    while listener.recv_frame(max(0.01, deadline - time.monotonic())).opcode != OP_PING:
        pass


@pytest.mark.skipif(sys.platform != "linux", reason="acknowledgements are read with SIOCOUTQ")
def test_keepalive_pings_a_client_behind_a_trusted_proxy_however_much_it_takes(
    inprocess_server: InProcessFactory, raw_client: RawClientFactory,
) -> None:
    # The proxy's TCP acknowledges what we send, whatever became of the client.
    server = inprocess_server(
        ChatApp(), ping_interval=0.3, ping_timeout=0.3, flush_interval=0.01,
        forwarded_allow_ips=("127.0.0.1",),
    )
    talker: RawClient = raw_client(server.port)
    _forwarded_handshake(talker, server.port)
    listener: RawClient = raw_client(server.port)
    _forwarded_handshake(listener, server.port)
    opcodes = _opcodes_while_a_peer_talks(talker, listener, 1.5)
    assert opcodes[-1] == OP_PING and OP_TEXT in opcodes[:-1]


def test_keepalive_keeps_a_client_that_answers_pings(inprocess_server: InProcessFactory) -> None:
    server = inprocess_server(
        ChatApp(), ping_interval=0.3, ping_timeout=0.3, flush_interval=0.01,
    )

    frames_in: list[str] = []

    class FrameLog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.msg == "< %s" and record.args:
                frames_in.append(str(record.args[0]))  # type: ignore[index]

    logger = logging.getLogger(f"test.keepalive.{id(frames_in)}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(FrameLog())

    async def scenario() -> None:
        # websockets answers the server's pings by itself; it sends none of its own.
        async with ws_connect(server.url, ping_interval=None, logger=logger) as ws:
            assert (await recv_json(ws))[0]["type"] == "welcome"
            # Several ping rounds pass; the connection must not close meanwhile.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(ws.wait_closed()), 1.5)
            await ws.send("still alive")
            events = await recv_json(ws)
            assert [e["text"] for e in events] == ["still alive"]

    run(scenario())
    pings = [f for f in frames_in if f.startswith("PING")]
    assert len(pings) >= 2, f"the server should have pinged every 0.3 s: {frames_in}"


def test_parse_frames_helper_roundtrip() -> None:
    """The raw client's own frame parser, so the live checks rest on something."""
    data = build_frame(OP_TEXT, b"a" * 130, mask=False) + build_frame(OP_PING, b"p", mask=False)
    frames, rest = parse_frames(data + b"\x81")
    assert [(f.opcode, len(f.payload)) for f in frames] == [(OP_TEXT, 130), (OP_PING, 1)]
    assert rest == b"\x81"


def test_server_log_has_no_tracebacks(shared_chat: ServerProcess) -> None:
    """Runs after the refused-upgrade checks on the shared server."""
    assert shared_chat.alive()
    assert "Traceback" not in Path(shared_chat.stderr_path).read_text()
