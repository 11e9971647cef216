"""Regressions for defects found in review, each with the input that showed it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from support.peer import close_code_of, feed_session
from support.servers import ServerFactory, ThreadedServer
from support.wire import raw_frame
from websockets.asyncio.client import connect

import wsnet
from wsnet._channel import Channel
from wsnet._clock import Timers
from wsnet._deflate import DeflateParams
from wsnet._limits import TokenBucket
from wsnet._reactor import Reactor
from wsnet.chat import ChatError, parse_command
from wsnet.server import tls_context
from wsnet.tokens import TokenError, make_token, verify_token


def test_lone_surrogate_text_is_refused_not_broadcast() -> None:
    # json.loads turns "\ud800" into a lone surrogate, which cannot be encoded:
    # broadcasting it once made every message of that tick vanish.
    result = parse_command('{"type":"message","text":"\\ud800"}')
    assert isinstance(result, ChatError) and result.error == "bad_text"


def test_non_ascii_token_is_malformed_not_a_crash() -> None:
    with pytest.raises(TokenError, match="malformed"):
        verify_token(b"secret", "a.1.\u00e9", now=0)
    with pytest.raises(TokenError, match="malformed"):
        verify_token(b"secret", "bmFtZQ.\u00b2.sig", now=0)  # '²'.isdigit() is True
    good = make_token(b"secret", "ann", 100)
    assert verify_token(b"secret", good, now=50) == "ann"


def test_timer_cancelled_by_an_earlier_timer_of_the_same_batch_does_not_run() -> None:
    timers = Timers()
    ran: list[str] = []
    second = timers.call_at(1.0, lambda: ran.append("second"))

    def first() -> None:
        ran.append("first")
        timers.cancel(second)

    timers.call_at(0.5, first)
    # Re-ordered in the heap by deadline: ``first`` pops before ``second``.
    timers.run_due(2.0, on_error=lambda exc: ran.append(repr(exc)))
    assert ran == ["first"]
    assert len(timers) == 0


def test_run_due_keeps_going_after_a_failing_timer() -> None:
    timers = Timers()
    ran: list[str] = []
    errors: list[BaseException] = []
    timers.call_at(1.0, lambda: 1 / 0)
    timers.call_at(1.0, lambda: ran.append("after"))
    timers.run_due(1.0, on_error=errors.append)
    assert ran == ["after"]
    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)


def test_empty_stored_blocks_cannot_grow_a_compressed_message_forever() -> None:
    # A compressed frame of empty stored blocks inflates to nothing: memory
    # grew by one list entry per read. Its compressed size is now bounded too.
    empty_blocks = b"\x00\x00\x00\xff\xff" * 100_000  # 500 kB that inflate to 0 bytes
    frame = raw_frame(0x1, empty_blocks, rsv1=True, fin=False)
    run = feed_session(
        [frame[i : i + 4096] for i in range(0, len(frame), 4096)],
        max_message_bytes=64 * 1024,
        deflate=DeflateParams(15, True),
    )
    assert run.close_code == 1009
    assert close_code_of(run.output) == 1009


def test_a_real_compressed_message_at_the_size_limit_is_accepted() -> None:
    # The compressed-size bound must not refuse honest incompressible data.
    payload = os.urandom(256 * 1024)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = comp.compress(payload) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert len(body) > len(payload)  # incompressible: deflate adds a little
    run = feed_session(
        [raw_frame(0x2, body[:-4], rsv1=True)],
        max_message_bytes=len(payload),
        deflate=DeflateParams(15, True),
    )
    assert run.close_code is None
    assert run.messages == [payload]


def test_ping_timeout_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="ping_timeout"):
        wsnet.Config(ping_timeout=0)


class _FailingStatus(wsnet.Handler):
    def status(self) -> dict[str, object]:
        raise RuntimeError("secret internals")


def test_healthz_answers_500_when_status_raises(
    inprocess_server: Callable[..., ThreadedServer],
) -> None:
    server = inprocess_server(_FailingStatus())
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
    assert info.value.code == 500
    assert b"secret internals" not in info.value.read()


class _TickFailsOnce:
    """A reactor protocol with no connections whose first tick raises."""

    def __init__(self) -> None:
        self.ticks = 0

    def connection_made(self, sock: socket.socket, peer: tuple[str, int]) -> Channel:
        raise AssertionError("no connections expected")

    def connection_handed(
        self, sock: socket.socket, peer: tuple[str, int], data: bytes,
    ) -> Channel | None:
        raise AssertionError("no hand-offs here")

    def data_received(self, ch: Channel, data: bytes) -> None: ...
    def eof_received(self, ch: Channel) -> None: ...
    def connection_lost(self, ch: Channel, exc: OSError | None) -> None: ...

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks == 1:
            raise RuntimeError("one bad tick")


def test_one_failing_tick_does_not_stop_the_tick() -> None:
    protocol = _TickFailsOnce()
    reactor = Reactor(protocol, flush_interval=0.005, high_water=1024)
    deadline = time.monotonic() + 5
    try:
        reactor.run(until=lambda: protocol.ticks >= 3 or time.monotonic() > deadline)
    finally:
        reactor.close_all()
    assert protocol.ticks >= 3


def test_a_batch_larger_than_the_outbox_limit_does_not_close_readers(
    server_factory: ServerFactory,
) -> None:
    # The limit applies to what already waits, not to the frame being added: a
    # client that reads must survive one tick's batch bigger than the limit.
    server = server_factory(
        "--outbox-limit-bytes", "65536", "--rate-limit", "0", "--flush-interval-ms", "200",
    )
    text = "\x01" * 4000  # JSON escapes each as \u0001: 24 kB per event

    async def scenario() -> tuple[int, int]:
        async with connect(server.url, max_size=None) as reader, connect(
            server.url, max_size=None,
        ) as sender:
            await asyncio.wait_for(reader.recv(), 5)
            await asyncio.wait_for(sender.recv(), 5)
            for _ in range(10):  # about 240 kB in one 200 ms tick
                await sender.send(text)
            got = 0
            size = 0
            while got < 10:
                frame = await asyncio.wait_for(reader.recv(), 5)
                size = max(size, len(frame))
                events = json.loads(frame)
                # The sender's arrival may share the reader's frame (same tick).
                assert {e["type"] for e in events} <= {"message", "join"}, frame[:200]
                got += sum(e["type"] == "message" for e in events)
            return got, size

    got, largest = asyncio.run(scenario())
    assert got == 10
    assert largest > 65536  # the batch really was bigger than the limit


def test_a_frame_declared_too_big_is_refused_before_its_payload() -> None:
    # Only the 14-byte header of a 2**40-byte text frame arrives: 1009 at once,
    # instead of after max_message_bytes of payload have been read.
    header = bytes((0x81, 0x80 | 127)) + (1 << 40).to_bytes(8, "big") + b"\x01\x02\x03\x04"
    run = feed_session([header], max_message_bytes=1 << 20)
    assert run.close_code == 1009
    assert close_code_of(run.output) == 1009


def test_a_frame_at_the_limit_is_still_read() -> None:
    payload = b"x" * (64 * 1024)
    run = feed_session([raw_frame(0x2, payload)], max_message_bytes=len(payload))
    assert run.close_code is None and run.messages == [payload]


def test_a_paced_flood_piles_up_strikes_a_pause_forgives() -> None:
    rate, burst = 50.0, 100
    bucket = TokenBucket(burst, now=0.0)
    now = 0.0
    # 500 msg/s, far above the limit but slow enough that a token trickles in
    # between most refusals: strikes must still pile up.
    for _ in range(400):
        now += 0.002
        bucket.take(now, rate, burst)
    assert bucket.strikes >= 100
    # A pause long enough to refill half the bucket forgives the flood.
    bucket.take(now + burst / 2 / rate, rate, burst)
    assert bucket.strikes == 0


def test_fragmented_compressed_message_under_the_limit_is_accepted() -> None:
    # A client that sync-flushes every fragment adds a few bytes per frame.
    payload = os.urandom(1_032_192)  # 16 KiB under the 1 MiB limit
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    pieces = [payload[i : i + 252] for i in range(0, len(payload), 252)]
    frames = []
    for i, piece in enumerate(pieces):
        body = comp.compress(piece) + comp.flush(zlib.Z_SYNC_FLUSH)
        last = i == len(pieces) - 1
        if last:
            body = body[:-4]
        frames.append(raw_frame(0x2 if i == 0 else 0x0, body, fin=last, rsv1=i == 0))
    wire = b"".join(frames)
    assert len(wire) > len(payload) + len(payload) // 1024 + 1024  # the old bound
    run = feed_session(
        [wire[i : i + 65536] for i in range(0, len(wire), 65536)],
        deflate=DeflateParams(15, True),
    )
    assert run.close_code is None
    assert run.messages == [payload]


def test_one_address_cannot_hold_more_than_twice_its_limit_in_sockets(
    inprocess_server: Callable[..., ThreadedServer],
) -> None:
    server = inprocess_server(wsnet.Handler(), max_connections_per_ip=2)
    hogs = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(4)]
    try:
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        extra.settimeout(5)
        # Closed at accept, with no HTTP answer: EOF (or a reset) at once.
        try:
            assert extra.recv(100) == b""
        except ConnectionResetError:
            pass
        extra.close()
        # Another address is not affected.
        other = socket.socket()
        other.bind(("127.0.0.2", 0))
        other.settimeout(5)
        other.connect(("127.0.0.1", server.port))
        other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert other.recv(100).startswith(b"HTTP/1.1 200 ")
        other.close()
    finally:
        for sock in hogs:
            sock.close()


@pytest.mark.live
def test_auth_secret_file_with_the_echo_app_is_an_error(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret\n")
    proc = subprocess.run(
        [sys.executable, "-m", "wsnet", "--app", "echo", "--auth-secret-file", str(secret)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 2
    assert "applies to the chat app" in proc.stderr


@pytest.mark.live
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--app", "echo", "--redis", "redis://127.0.0.1:6379/0"], "applies to the chat app"),
        (["--redis", "http://127.0.0.1/"], "not a redis://"),
        (["--node-ttl", "0"], "--node-ttl must be > 0"),
    ],
)
def test_backplane_options_are_checked(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "wsnet", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 2
    assert message in proc.stderr


def test_tls_context_refuses_renegotiation_and_old_versions(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    context = tls_context(wsnet.Config(certfile=str(certfile), keyfile=str(keyfile)))
    assert context is not None
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
