"""Limits on a live server: shutdown, a busy port, the connection cap, and
fuzzers throwing bad bytes and bad chat text over raw sockets. (Slow consumers
live with the other hostile peers, in test_hostile.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import time
import zlib
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.chat import recv_json, ws_connect
from support.chat import run as run_bounded
from support.rawclient import (
    ConnectionEnded,
    RawClient,
    RawClientFactory,
    healthz,
    read_response,
)
from support.servers import ServerFactory, launch
from support.wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    build_frame,
    parse_frames,
    upgrade_request,
)
from websockets.sync.client import connect as sync_connect

pytestmark = pytest.mark.live

Event = dict[str, Any]
KIB = 1024
MIB = 1024 * KIB


run = partial(run_bounded, timeout=30.0)


# ----------------------------------------------------------------------------
# Shutdown, busy port, connection cap
# ----------------------------------------------------------------------------


def test_sigterm_closes_every_client_1001_and_exits_0(
    server_factory: ServerFactory, raw_client: RawClientFactory,
) -> None:
    server = server_factory()
    # One connection still in its HTTP request: shutdown just drops it.
    dawdler: RawClient = raw_client(server.port)
    dawdler.send(b"GET / HTTP/1.1\r\n")

    async def scenario() -> tuple[list[int | None], float]:
        clients = [await ws_connect(f"{server.url}?name=c{i}") for i in range(5)]
        try:
            for ws in clients:
                await recv_json(ws)
            assert healthz(server.port)["connections"] == 5
            start = time.monotonic()
            os.kill(server.pid, signal.SIGTERM)
            await asyncio.gather(*(asyncio.wait_for(ws.wait_closed(), 8) for ws in clients))
            # The listener is gone as soon as shutdown starts.
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
            return [ws.close_code for ws in clients], start
        finally:
            await asyncio.gather(*(ws.close() for ws in clients))

    codes, start = run(scenario())
    assert codes == [1001] * 5
    returncode = server.process.wait(timeout=8)
    elapsed = time.monotonic() - start
    assert returncode == 0
    assert elapsed < 5.0, f"exit took {elapsed:.2f}s with cooperative clients (grace 5 s)"
    assert dawdler.wait_eof(2)
    log = server.stderr_text()
    assert "stopped" in log and "Traceback" not in log


def test_sigterm_with_a_client_that_never_answers_exits_after_the_grace(
    server_factory: ServerFactory, raw_client: RawClientFactory,
) -> None:
    server = server_factory()
    mute: RawClient = raw_client(server.port)
    mute.handshake()
    assert mute.recv_data_frame().opcode == OP_TEXT  # welcome
    start = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    assert mute.recv_close().close_code == 1001
    returncode = server.process.wait(timeout=10)
    elapsed = time.monotonic() - start
    assert returncode == 0
    assert elapsed < 5.0 + 2.0, f"the 5 s shutdown grace was not honoured: {elapsed:.2f}s"


def test_port_in_use_exits_2_with_one_line_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hog:
        hog.bind(("127.0.0.1", 0))
        hog.listen()
        port = hog.getsockname()[1]
        stderr_path = tmp_path / "busy.stderr"
        proc = launch(["--host", "127.0.0.1", "--port", str(port)], stderr_path)
        try:
            returncode = proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
    assert returncode == 2
    assert out == b"", "nothing may claim to be listening"
    lines = stderr_path.read_text().splitlines()
    assert len(lines) == 1, lines
    assert str(port) in lines[0] and "address already in use" in lines[0], lines[0]


def test_connection_cap_answers_503(server_factory: ServerFactory) -> None:
    server = server_factory("--max-connections", "2")

    async def scenario() -> None:
        async with ws_connect(server.url) as a:
            await recv_json(a)
            async with ws_connect(server.url) as b:
                await recv_json(b)
                with RawClient(server.port) as third:
                    third.send(upgrade_request(server.port))
                    response = read_response(third)
                assert response.status == 503
                assert "retry-after" in response.headers
            # One left: there is room again.
            deadline = time.monotonic() + 5
            while healthz(server.port)["connections"] != 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            async with ws_connect(server.url) as c:
                assert (await recv_json(c))[0]["type"] == "welcome"

    run(scenario())


# ----------------------------------------------------------------------------
# Fuzzing a live server
# ----------------------------------------------------------------------------


def _close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def _masked_with_length_header(second: int, extended: bytes, payload: bytes) -> bytes:
    key = b"\x01\x02\x03\x04"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | second)) + extended + key + body


def _deflated(data: bytes) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH))[:-4]


MAX_MESSAGE = 4096

#: (name, bytes after a valid prefix, expected close code, deflate: True/False/None=any)
CORRUPTIONS: list[tuple[str, bytes, int, bool | None]] = [
    ("rsv2", build_frame(OP_TEXT, b"x", rsv2=True), 1002, None),
    ("rsv3", build_frame(OP_TEXT, b"x", rsv3=True), 1002, None),
    ("rsv1-without-deflate", build_frame(OP_TEXT, b"x", rsv1=True), 1002, False),
    ("opcode-3", build_frame(0x3, b""), 1002, None),
    ("opcode-0xB", build_frame(0xB, b""), 1002, None),
    ("unmasked", build_frame(OP_TEXT, b"hi", mask=False), 1002, None),
    ("orphan-continuation", build_frame(OP_CONT, b"x"), 1002, None),
    (
        "interrupted-fragment",
        build_frame(OP_TEXT, b"a", fin=False) + build_frame(OP_TEXT, b"b"),
        1002,
        None,
    ),
    ("fragmented-ping", build_frame(OP_PING, b"", fin=False), 1002, None),
    ("long-ping", build_frame(OP_PING, b"p" * 126), 1002, None),
    ("close-1-byte", build_frame(OP_CLOSE, b"\x03"), 1002, None),
    ("close-999", build_frame(OP_CLOSE, _close_payload(999)), 1002, None),
    ("close-1005", build_frame(OP_CLOSE, _close_payload(1005)), 1002, None),
    ("close-1016", build_frame(OP_CLOSE, _close_payload(1016)), 1002, None),
    ("close-5000", build_frame(OP_CLOSE, _close_payload(5000)), 1002, None),
    ("close-bad-utf8", build_frame(OP_CLOSE, _close_payload(1000, b"\xff")), 1007, None),
    ("text-bad-utf8", build_frame(OP_TEXT, b"caf\xc3"), 1007, None),
    ("binary-in-chat", build_frame(OP_BINARY, b"\x00\x01"), 1003, None),
    ("non-minimal-16", _masked_with_length_header(126, struct.pack("!H", 5), b"hello"), 1002, None),
    ("non-minimal-64", _masked_with_length_header(127, struct.pack("!Q", 5), b"hello"), 1002, None),
    ("length-msb", _masked_with_length_header(127, struct.pack("!Q", 1 << 63), b""), 1002, None),
    ("too-big", build_frame(OP_TEXT, b"y" * (MAX_MESSAGE + 1)), 1009, None),
    (
        "too-big-fragmented",
        build_frame(OP_TEXT, b"y" * 3000, fin=False) + build_frame(OP_CONT, b"y" * 1500),
        1009,
        None,
    ),
    (
        "rsv1-on-continuation",
        build_frame(OP_TEXT, _deflated(b"ab"), fin=False, rsv1=True)
        + build_frame(OP_CONT, b"c", rsv1=True),
        1002,
        True,
    ),
    ("rsv1-on-ping", build_frame(OP_PING, b"", rsv1=True), 1002, True),
    ("bad-deflate-data", build_frame(OP_TEXT, b"\xff\xff\xff\xff", rsv1=True), 1007, True),
    ("deflate-bomb", build_frame(OP_TEXT, _deflated(b"z" * 200_000), rsv1=True), 1009, True),
]

DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=24)
VALID_CLOSE_CODES = set(range(1000, 5000)) - {1004, 1005, 1006, 1015}


def _check_stream(data: bytes) -> list[int]:
    """Server output must be whole, unmasked frames with at most a final close."""
    frames, rest = parse_frames(data)
    assert rest == b"", f"stream ends inside a frame: {rest[:40]!r}"
    for i, frame in enumerate(frames):
        assert frame.opcode in (OP_TEXT, OP_CLOSE, OP_PING, OP_PONG), frame
        if frame.opcode == OP_CLOSE:
            assert i == len(frames) - 1, "frames after a close frame"
            code = frame.close_code
            assert code is None or code in VALID_CLOSE_CODES, code
    return [f.opcode for f in frames]


def _corrupted_connection(
    port: int,
    *,
    prefix: list[str],
    ping: bool,
    corruption: tuple[str, bytes, int, bool | None],
    deflate: bool,
    split: int,
) -> None:
    """Valid frames, then one violation: the server must answer with the exact
    close code without waiting for our EOF, then end the connection."""
    name, bad, expected, needs = corruption
    use_deflate = deflate if needs is None else needs
    with RawClient(port, timeout=3) as client:
        agreed = client.handshake(
            "/?name=fz", extensions=DEFLATE_OFFER if use_deflate else None,
        )
        assert ("sec-websocket-extensions" in agreed) == use_deflate
        payload = b"".join(bytes(client.encoder.send_data(t, fin=True)) for t in prefix)
        if ping:
            payload += bytes(client.encoder.ping(b"fuzz"))
        payload += bad
        cut = split % len(payload)
        if cut:
            client.send(payload[:cut])
        client.send(payload[cut:])
        close = client.recv_close(timeout=3)
        assert close.close_code == expected, (name, close)
        # Answer the close as the RFC asks; the server then ends the TCP connection.
        client.send(build_frame(OP_CLOSE, _close_payload(1000)))
        assert client.wait_eof(3), f"connection left open after {name}"


def _random_connection(
    port: int, *, upgrade_first: bool, prefix: list[str], junk: bytes,
    flip: tuple[int, int] | None,
) -> None:
    """Arbitrary bytes, then our EOF: whatever the server sent must be well formed
    (an HTTP error, or whole frames ending at most in one close), and it must close."""
    with RawClient(port, timeout=3) as client:
        if not upgrade_first:
            client.send(junk)
            client.sock.shutdown(socket.SHUT_WR)
            data = client.read_until_eof(3)
            if data:
                status_line = data.split(b"\r\n", 1)[0]
                assert status_line.startswith(b"HTTP/1.1 4"), data[:80]
                assert b"\r\nConnection: close" in data.partition(b"\r\n\r\n")[0]
            return
        client.handshake("/?name=rnd")
        payload = bytearray(
            b"".join(bytes(client.encoder.send_data(t, fin=True)) for t in prefix) + junk,
        )
        if flip is not None:
            position, mask = flip
            payload[position % len(payload)] ^= mask
        client.send(bytes(payload))
        client.sock.shutdown(socket.SHUT_WR)
        data = client.buf + client.read_until_eof(3)
        _check_stream(data)


def test_fuzz_bad_bytes_never_crash_the_server(server_factory: ServerFactory) -> None:
    server = server_factory(
        "--max-message-bytes", str(MAX_MESSAGE), "--flush-interval-ms", "5",
    )
    port = server.port
    tracked: list[str] = []  # chat text from "fz" clients: must be broadcast exactly once
    runs = Counter[str]()

    def alive() -> None:
        assert server.alive(), f"server died: {server.stderr_text()[-2000:]}"

    fuzz_settings = settings(
        max_examples=40, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )

    @fuzz_settings
    @given(
        prefix=st.lists(WORDS, max_size=3),
        ping=st.booleans(),
        corruption=st.sampled_from(CORRUPTIONS),
        deflate=st.booleans(),
        split=st.integers(min_value=0, max_value=10_000),
    )
    def valid_then_corrupted(
        prefix: list[str],
        ping: bool,
        corruption: tuple[str, bytes, int, bool | None],
        deflate: bool,
        split: int,
    ) -> None:
        runs["corrupted"] += 1
        _corrupted_connection(
            port, prefix=prefix, ping=ping, corruption=corruption, deflate=deflate, split=split,
        )
        tracked.extend(prefix)
        alive()

    @fuzz_settings
    @given(
        upgrade_first=st.booleans(),
        prefix=st.lists(WORDS, max_size=2),
        junk=st.one_of(
            st.binary(min_size=1, max_size=300),
            st.binary(max_size=200).map(lambda b: b"GET / HTTP/1.1\r\n" + b),
        ),
        flip=st.one_of(st.none(), st.tuples(st.integers(0, 10_000), st.integers(1, 255))),
    )
    def random_bytes(
        upgrade_first: bool, prefix: list[str], junk: bytes, flip: tuple[int, int] | None,
    ) -> None:
        runs["upgraded" if upgrade_first else "http"] += 1
        _random_connection(
            port, upgrade_first=upgrade_first, prefix=prefix, junk=junk, flip=flip,
        )
        alive()

    with sync_connect(
        server.url + "?name=observer", proxy=None, open_timeout=5, close_timeout=2,
        ping_interval=None, max_queue=None,
    ) as observer:
        first = json.loads(observer.recv(timeout=5))
        assert first[0]["type"] == "welcome"

        # Every corruption once, deterministically, then the randomised runs.
        for corruption in CORRUPTIONS:
            _corrupted_connection(
                port, prefix=["sweep"], ping=True, corruption=corruption, deflate=True, split=0,
            )
            tracked.append("sweep")
            alive()
        valid_then_corrupted()
        random_bytes()
        assert runs["corrupted"] >= 40 and runs["upgraded"] > 0 and runs["http"] > 0, runs

        # Nothing leaked: only the observer is still open.
        deadline = time.monotonic() + 6
        while healthz(port)["connections"] != 1:
            assert time.monotonic() < deadline, healthz(port)
            time.sleep(0.02)

        # The observer is still served: it gets its own marker, and every tracked
        # message from the fuzzing clients arrived exactly once.
        observer.send("marker after the fuzz")
        seen: Counter[str] = Counter()
        deadline = time.monotonic() + 10
        marker_seen = False
        for _ in range(10_000):
            if marker_seen:
                break
            raw = observer.recv(timeout=max(0.01, deadline - time.monotonic()))
            assert isinstance(raw, str)
            for event in json.loads(raw):
                if event["type"] in ("join", "leave"):  # the fuzzing clients come and go
                    assert event["name"] in ("fz", "rnd"), event
                    continue
                assert event["type"] == "message", event
                if event["from"] == "observer":
                    assert event["text"] == "marker after the fuzz"
                    marker_seen = True
                elif event["from"] == "fz":
                    seen[event["text"]] += 1
        assert marker_seen
        assert seen == Counter(tracked)

    alive()
    log = server.stderr_text()
    assert "Traceback" not in log, log[-3000:]
    assert "internal error" not in log, log[-3000:]


def test_raw_client_sees_connection_end_helper() -> None:
    """ConnectionEnded is raised at EOF, so the fuzz checks cannot pass vacuously."""
    left, right = socket.socketpair()
    with left, right:
        right.sendall(b"\x81\x00")
        right.shutdown(socket.SHUT_WR)
        client = RawClient(0, sock=left, timeout=2.0)
        assert client.recv_frame().opcode == OP_TEXT
        with pytest.raises(ConnectionEnded):
            client.recv_frame()



JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=20),
)
CHAT_INPUTS = st.one_of(
    st.text(max_size=200),
    st.text(max_size=50).map(lambda t: "{" + t),  # broken JSON that looks like a command
    st.dictionaries(
        st.sampled_from(["type", "room", "text", "name", "since", "x"]),
        st.one_of(JSON_SCALARS, st.sampled_from(["message", "join", "leave", "nick", "lobby"])),
        max_size=4,
    ).map(json.dumps),
    st.builds(
        lambda room, text: json.dumps({"type": "message", "room": room, "text": text}),
        st.sampled_from(["lobby", "other", ""]),
        st.text(max_size=50),
    ),
)


def test_fuzz_chat_text_is_always_answered_and_never_fatal(server_factory: ServerFactory) -> None:
    """Any text frame gets exactly one answer, a broadcast, an error event or the
    reply to a join, leave or nick, and the connection stays open (chat protocol v1)."""
    server = server_factory("--flush-interval-ms", "5")
    answered = Counter[str]()
    with sync_connect(
        server.url + "?name=talker", proxy=None, open_timeout=5, close_timeout=2,
        ping_interval=None,
    ) as ws:
        first = json.loads(ws.recv(timeout=5))
        assert first[0]["type"] == "welcome"
        me = first[0]["id"]
        rooms = {"lobby"}  # where the talker is, as its answers say

        @settings(max_examples=60, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(text=CHAT_INPUTS)
        def one_text(text: str) -> None:
            ws.send(text)
            events = json.loads(ws.recv(timeout=3))
            event, rest = events[0], events[1:]
            answered[event["type"]] += 1
            if event["type"] == "presence":  # joined: the snapshot, then any replay
                assert {e["type"] for e in rest} <= {"gap", "message"}, events
                assert all(e["room"] == event["room"] for e in rest), events
                assert event["room"] not in rooms, events
                rooms.add(event["room"])
                return
            if event["type"] == "nick":  # the reply, then the rename in each room
                assert event["id"] == me and "room" not in event, events
                assert sorted(e["room"] for e in rest) == sorted(rooms), events
                assert all(e["type"] == "nick" and e["id"] == me for e in rest), events
                return
            assert len(events) == 1, events
            if event["type"] == "error":
                assert isinstance(event["error"], str) and isinstance(event["detail"], str)
            elif event["type"] == "leave":
                assert event["id"] == me and event["room"] in rooms, (event, rooms)
                rooms.discard(event["room"])
            else:
                assert event["type"] == "message", event
                assert event["from_id"] == me and event["room"] in rooms, (event, rooms)
                if not text.lstrip().startswith("{"):
                    assert event["text"] == text
                assert event["text"].strip()

        one_text()
        assert answered["message"] > 0 and answered["error"] > 0, answered
        if "lobby" not in rooms:  # a fuzzed leave took the talker out
            ws.send(json.dumps({"type": "join", "room": "lobby"}))
            assert json.loads(ws.recv(timeout=3))[0]["type"] == "presence"
        ws.send("still open")
        assert json.loads(ws.recv(timeout=3))[0]["text"] == "still open"
    assert server.alive()
    assert "Traceback" not in server.stderr_text()
