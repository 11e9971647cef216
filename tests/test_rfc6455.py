"""RFC 6455 and RFC 7692 conformance, section by section, against a live echo server.

Each class mirrors one Autobahn|Testsuite category (../shared/tools/autobahn/README.md)
so that ``make test`` catches a conformance regression without running Autobahn.
Everything goes over real sockets on 127.0.0.1 to one ``python -m wsnet --app echo``
per module. Raw frames come from ``support.wire.build_frame`` and ``support.rawclient.RawClient``
(every read has a deadline); the ``websockets`` client is the independent peer for
permessage-deflate.

test_session.py checks many of the same rules on in-memory bytes; these check that
the reactor, the outbox and the write path keep them, including the order in which
replies and close frames leave the server.
"""

from __future__ import annotations

import asyncio
import functools
import random
import struct
import time
import zlib
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.chat import run as run_bounded
from support.chat import ws_connect
from support.rawclient import RawClient
from support.servers import ServerProcess, start_server
from support.wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Frame,
    build_frame,
    parse_frame,
    parse_frames,
)
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)

pytestmark = [pytest.mark.live, pytest.mark.timeout(120)]

#: Every wait for the server has this deadline (seconds).
DEADLINE = 5.0
KiB = 1 << 10
MiB = 1 << 20
#: RFC 7692 §7.2.1: the empty stored block a sender strips from each message.
SYNC_TAIL = b"\x00\x00\xff\xff"
PMD = "permessage-deflate"

Reply = tuple[int, bytes]


# ----------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One echo server for the whole module (deflate enabled, as by default)."""
    server = start_server(["--app", "echo"], tmp_path_factory.mktemp("rfc6455") / "echo.stderr")
    yield server
    assert server.alive(), "the echo server died during the module"
    assert server.terminate_and_wait() == 0
    assert "Traceback" not in server.stderr_text()


@pytest.fixture
def client(echo: ServerProcess) -> Iterator[RawClient]:
    """A raw client, upgraded without extensions."""
    with RawClient(echo.port, timeout=DEADLINE) as raw:
        raw.handshake()
        yield raw


run = partial(run_bounded, timeout=30.0)


def describe(frame: Frame) -> str:
    """A frame in one short line (payloads can be megabytes)."""
    bits = "".join(
        name for name, on in (("F", frame.fin), ("1", frame.rsv1), ("2", frame.rsv2),
                              ("3", frame.rsv3)) if on
    )
    return f"<op={frame.opcode:#x} {bits} {len(frame.payload)}B {frame.payload[:40]!r}>"


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def frame_per_write(client: RawClient, frames: list[bytes]) -> None:
    for frame in frames:
        client.send(frame)


def chopped(client: RawClient, data: bytes, size: int) -> None:
    """``data`` in writes of ``size`` bytes (TCP_NODELAY is on: each is a segment)."""
    for start in range(0, len(data), size):
        client.send(data[start:start + size])


def fragments(opcode: int, payload: bytes, size: int) -> list[bytes]:
    """One message as frames of ``size`` payload bytes (at least one frame)."""
    pieces = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
    last = len(pieces) - 1
    return [
        build_frame(opcode if i == 0 else OP_CONT, piece, fin=i == last)
        for i, piece in enumerate(pieces)
    ]


def recv_message(client: RawClient, timeout: float = DEADLINE) -> Reply:
    """The next whole data message, reassembled from however many frames the
    server used; server pings are skipped. A close, a pong or a frame that breaks
    the framing rules instead fails the test."""
    deadline = time.monotonic() + timeout
    opcode: int | None = None
    parts: list[bytes] = []
    while True:
        frame = client.recv_frame(max(0.0, deadline - time.monotonic()))
        if frame.opcode == OP_PING:
            continue
        assert frame.opcode != OP_CLOSE, (
            f"closed {frame.close_code} {frame.payload[2:]!r} instead of sending a message"
        )
        assert not (frame.rsv1 or frame.rsv2 or frame.rsv3), describe(frame)
        if opcode is None:
            assert frame.opcode in (OP_TEXT, OP_BINARY), f"expected data: {describe(frame)}"
            opcode = frame.opcode
        else:
            assert frame.opcode == OP_CONT, f"expected a continuation: {describe(frame)}"
        parts.append(frame.payload)
        if frame.fin:
            return opcode, b"".join(parts)


def expect_echo(client: RawClient, opcode: int, payload: bytes, timeout: float = DEADLINE) -> None:
    got_opcode, got = recv_message(client, timeout)
    assert got_opcode == opcode, (got_opcode, opcode)
    same = got == payload  # not in the assert: pytest would diff megabytes
    assert same, f"{len(got)} bytes came back for {len(payload)} sent: {got[:60]!r}"


def expect_close(
    client: RawClient,
    code: int | None,
    *,
    reason: bytes | None = None,
    timeout: float = DEADLINE,
) -> None:
    """The very next frame is a close with ``code``; then the server ends the TCP
    connection (RFC 6455 §7.1.1) with nothing after its close frame."""
    frame = client.recv_frame(timeout)
    assert frame.opcode == OP_CLOSE, f"expected close {code}, got {describe(frame)}"
    assert frame.close_code == code, (frame.close_code, frame.payload[2:])
    if reason is not None:
        assert frame.payload[2:] == reason
    rest = client.read_until_eof(timeout)
    assert rest == b"", f"after the close: {[describe(f) for f in parse_frames(rest)[0]]}"


def recv_with_header(client: RawClient, timeout: float = DEADLINE) -> tuple[Frame, bytes]:
    """The next frame and the first bytes of its header as they were on the wire."""
    deadline = time.monotonic() + timeout
    while parse_frame(client.buf) is None:
        client._fill(deadline)
    header = bytes(client.buf[:10])
    return client.recv_frame(max(0.0, deadline - time.monotonic())), header


# -- payloads ------------------------------------------------------------------

#: Characters of every UTF-8 length: ASCII, Latin-1, Greek, CJK, emoji.
_ALPHABET = [
    chr(c)
    for c in (*range(0x20, 0x7F), *range(0xA0, 0x180), *range(0x391, 0x3CA),
              *range(0x4E00, 0x4E80), *range(0x1F600, 0x1F650))
]


@functools.cache
def random_text(size: int) -> str:
    """Random text of exactly ``size`` UTF-8 bytes, with characters of every length."""
    rng = random.Random(size)
    encoded = "".join(rng.choices(_ALPHABET, k=size // 2 + 8)).encode()[:size]
    text = encoded.decode("utf-8", "ignore")  # drops a character cut at the end
    return text + "x" * (size - len(text.encode()))


@functools.cache
def compressible_text(size: int) -> str:
    line = "The quick brown fox jumps over the lazy dog, \u00e9t\u00e9 \u2713. "
    text = (line * (size // len(line) + 1)).encode()[:size].decode("utf-8", "ignore")
    return text + "." * (size - len(text.encode()))


@functools.cache
def random_bytes(size: int) -> bytes:
    return random.Random(-size).randbytes(size)


@functools.cache
def compressible_bytes(size: int) -> bytes:
    return (bytes(range(64)) * 2 + bytes(128)) * (size // 256) + bytes(size % 256)


def window_probe(bits: int) -> bytes:
    """Random blocks repeated at a distance just beyond a 2**bits window: a
    compressor that uses a larger window references them, one that keeps to the
    window cannot."""
    period = (1 << bits) + (1 << (bits - 2))
    return random.Random(bits).randbytes(period) * 4


def deflate_raw(payload: bytes, bits: int = 15) -> bytes:
    """RFC 7692 §7.2.1 with a fresh context: raw deflate, sync flush, tail removed."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(SYNC_TAIL)
    return data[:-4]


def inflate_with_window(payload: bytes, bits: int, step: int = 64) -> bytes:
    """RFC 7692 §7.2.2 with a window of exactly 2**bits bytes.

    zlib only enforces the window for distances that reach behind the current
    output buffer, so the output is taken ``step`` bytes at a time: a reference
    further back than 2**bits + step then fails ("invalid distance too far back").
    """
    inflater = zlib.decompressobj(-bits)
    pending = payload + SYNC_TAIL
    out = bytearray()
    for _ in range(1 << 20):  # bound: every pass but the last fills a whole step
        chunk = inflater.decompress(pending, step)
        out += chunk
        pending = inflater.unconsumed_tail
        if not pending and len(chunk) < step:
            return bytes(out)
    raise AssertionError("inflate did not finish")


def parse_pmd_response(value: str) -> dict[str, str | None]:
    """The parameters of the one permessage-deflate answer in a response header."""
    assert "," not in value, f"the server must accept at most one offer: {value!r}"
    name, *params = (part.strip() for part in value.split(";"))
    assert name.lower() == PMD, value
    out: dict[str, str | None] = {}
    for param in params:
        key, sep, raw = param.partition("=")
        key = key.strip().lower()
        assert key not in out, f"repeated parameter {key} (RFC 7692 §7): {value!r}"
        out[key] = raw.strip().strip('"') if sep else None
    return out


# ----------------------------------------------------------------------------
# RFC 6455 §5.2 base framing — Autobahn 1.*
# ----------------------------------------------------------------------------

LENGTHS = [0, 1, 125, 126, 127, 128, 65535, 65536]


def _payload_for(opcode: int, size: int) -> bytes:
    return compressible_text(size).encode() if opcode == OP_TEXT else random_bytes(size)


class TestFraming_5_2:
    """RFC 6455 §5.2 (base framing protocol: the 7-bit, 16-bit and 64-bit payload
    length forms) — Autobahn 1.1.* (text) and 1.2.* (binary)."""

    @pytest.mark.parametrize("size", LENGTHS)
    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
    def test_payload_lengths_echo_exactly_with_minimal_length_encoding(
        self, client: RawClient, opcode: int, size: int,
    ) -> None:
        payload = _payload_for(opcode, size)
        assert len(payload) == size
        client.send(build_frame(opcode, payload))
        frame, header = recv_with_header(client)
        assert frame.opcode == opcode and frame.fin, describe(frame)
        assert frame.payload == payload
        # §5.2: "the minimal number of bytes MUST be used to encode the length";
        # §5.1: a server MUST NOT mask.
        assert header[1] & 0x80 == 0
        length_code = header[1] & 0x7F
        assert length_code == (size if size <= 125 else 126 if size <= 0xFFFF else 127)

    @pytest.mark.parametrize(
        ("size", "chop"),
        [(0, 1), (1, 1), (125, 1), (126, 1), (127, 1), (300, 1), (65535, 997), (65536, 997)],
    )
    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
    def test_chopped_writes(self, client: RawClient, opcode: int, size: int, chop: int) -> None:
        """One frame written ``chop`` bytes at a time (byte by byte for short
        frames, 997-byte chops like Autobahn 1.1.8 for 64 KiB)."""
        payload = _payload_for(opcode, size)
        chopped(client, build_frame(opcode, payload), chop)
        expect_echo(client, opcode, payload)

    def test_several_frames_in_one_write_keep_their_order(self, client: RawClient) -> None:
        messages = [(OP_TEXT, b"one"), (OP_BINARY, b"\x00two\xff"), (OP_TEXT, b""),
                    (OP_BINARY, random_bytes(70_000)), (OP_TEXT, "f\u00fcnf".encode())]
        client.send(b"".join(build_frame(op, data) for op, data in messages))
        for opcode, payload in messages:
            expect_echo(client, opcode, payload)

    @pytest.mark.parametrize(
        "header",
        [
            pytest.param(bytes((0x81, 0x80 | 126)) + struct.pack("!H", 5), id="16-bit-for-5"),
            pytest.param(bytes((0x81, 0x80 | 126)) + struct.pack("!H", 125), id="16-bit-for-125"),
            pytest.param(bytes((0x82, 0x80 | 127)) + struct.pack("!Q", 200), id="64-bit-for-200"),
            pytest.param(bytes((0x82, 0x80 | 127)) + struct.pack("!Q", 65535),
                         id="64-bit-for-65535"),
            pytest.param(bytes((0x82, 0x80 | 127)) + struct.pack("!Q", 1 << 63), id="64-bit-msb"),
        ],
    )
    def test_non_minimal_or_invalid_length_is_1002(self, client: RawClient, header: bytes) -> None:
        """§5.2: minimal length encoding, and the 64-bit length's top bit MUST be 0."""
        client.send(build_frame(OP_TEXT, b"before") + header + b"\x00\x00\x00\x00" + b"a" * 200)
        expect_echo(client, OP_TEXT, b"before")
        expect_close(client, 1002)

    @settings(max_examples=25, deadline=None)
    @given(cuts=st.lists(st.integers(min_value=1, max_value=10_000), max_size=24))
    def test_any_split_of_a_mixed_stream_gives_the_same_replies(
        self, echo: ServerProcess, cuts: list[int],
    ) -> None:
        """Writes split at arbitrary points (inside headers, masks, payloads and
        multi-byte characters) change nothing the server sends back."""
        stream = b"".join([
            build_frame(OP_TEXT, "Hello \u2713".encode()),
            build_frame(OP_PING, b"p1"),
            build_frame(OP_BINARY, b"\x00", fin=False),
            build_frame(OP_CONT, b"", fin=False),
            build_frame(OP_PING, b"p2"),
            build_frame(OP_CONT, b"\xff" * 300),
            build_frame(OP_PONG, b"unsolicited"),
            build_frame(OP_TEXT, b"\xf0\x9f", fin=False),
            build_frame(OP_CONT, b"\x98\x80!"),
            build_frame(OP_CLOSE, close_payload(1000, b"done")),
        ])
        points = sorted({c % len(stream) for c in cuts} - {0})
        with RawClient(echo.port, timeout=DEADLINE) as raw:
            raw.handshake()
            for start, end in zip([0, *points], [*points, len(stream)], strict=True):
                raw.send(stream[start:end])
            got = [raw.recv_frame() for _ in range(5)]
            assert [(f.opcode, f.payload) for f in got] == [
                (OP_TEXT, "Hello \u2713".encode()),
                (OP_PONG, b"p1"),
                (OP_PONG, b"p2"),
                (OP_BINARY, b"\x00" + b"\xff" * 300),
                (OP_TEXT, "\U0001f600!".encode()),
            ]
            expect_close(raw, 1000, reason=b"done")


class TestMasking_5_3:
    """RFC 6455 §5.1/§5.3 (a server MUST fail the connection on an unmasked client
    frame) — Autobahn's fuzzing client always masks; this closes the gap."""

    @pytest.mark.parametrize(
        ("opcode", "payload"),
        [(OP_TEXT, b"naked"), (OP_BINARY, b"\x00\x01"), (OP_PING, b"p"), (OP_PONG, b""),
         (OP_CLOSE, close_payload(1000)), (OP_CONT, b"x")],
        ids=["text", "binary", "ping", "pong", "close", "continuation"],
    )
    def test_unmasked_frame_after_a_masked_one_is_1002(
        self, client: RawClient, opcode: int, payload: bytes,
    ) -> None:
        client.send(build_frame(OP_TEXT, b"masked") + build_frame(opcode, payload, mask=False))
        expect_echo(client, OP_TEXT, b"masked")
        expect_close(client, 1002)


# ----------------------------------------------------------------------------
# RFC 6455 §5.5.2 / §5.5.3 ping and pong — Autobahn 2.*
# ----------------------------------------------------------------------------


class TestPingPong_5_5_2:
    """RFC 6455 §5.5.2 (a ping is answered by a pong with the same "Application
    data"), §5.5.3 (an unsolicited pong needs no answer) and §5.5 (control frames:
    at most 125 bytes, never fragmented) — Autobahn 2.1-2.11."""

    @pytest.mark.parametrize(
        "payload",
        [b"", b"Hello, world!", bytes((0x00, 0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0x00, 0xFF)),
         bytes(range(125)), b"\xff" * 125],
        ids=["empty", "text", "binary", "125-bytes", "125-bytes-0xff"],
    )
    def test_ping_answered_with_identical_pong(self, client: RawClient, payload: bytes) -> None:
        client.send(build_frame(OP_PING, payload))
        frame = client.recv_frame()
        assert (frame.opcode, frame.fin, frame.payload) == (OP_PONG, True, payload)

    def test_ping_125_bytes_written_byte_by_byte(self, client: RawClient) -> None:
        payload = bytes(range(125))
        chopped(client, build_frame(OP_PING, payload), 1)
        frame = client.recv_frame()
        assert (frame.opcode, frame.payload) == (OP_PONG, payload)

    @pytest.mark.parametrize("size", [126, 65535, 65536])
    def test_ping_over_125_bytes_is_1002(self, client: RawClient, size: int) -> None:
        client.send(build_frame(OP_PING, b"\xfe" * size))
        expect_close(client, 1002)

    def test_fragmented_ping_is_1002(self, client: RawClient) -> None:
        client.send(build_frame(OP_PING, b"frag", fin=False) + build_frame(OP_CONT, b"ment"))
        expect_close(client, 1002)

    @pytest.mark.parametrize("payload", [b"", b"unsolicited pong payload"], ids=["empty", "data"])
    def test_unsolicited_pong_is_ignored(self, client: RawClient, payload: bytes) -> None:
        client.send(build_frame(OP_PONG, payload) + build_frame(OP_TEXT, b"after the pong"))
        expect_echo(client, OP_TEXT, b"after the pong")
        client.send(build_frame(OP_PONG, payload) + build_frame(OP_PING, b"ping after pong"))
        frame = client.recv_frame()
        assert (frame.opcode, frame.payload) == (OP_PONG, b"ping after pong")

    @pytest.mark.parametrize("writes", ["one-write", "one-write-each"])
    def test_ten_pings_get_ten_pongs_in_order(self, client: RawClient, writes: str) -> None:
        pings = [build_frame(OP_PING, f"payload-{i}".encode()) for i in range(10)]
        if writes == "one-write":
            client.send(b"".join(pings))
        else:
            frame_per_write(client, pings)
        pongs = [client.recv_frame() for _ in range(10)]
        assert [(f.opcode, f.payload) for f in pongs] == [
            (OP_PONG, f"payload-{i}".encode()) for i in range(10)
        ]

    def test_pings_between_messages_are_answered_in_order(self, client: RawClient) -> None:
        client.send(build_frame(OP_TEXT, b"a") + build_frame(OP_PING, b"1")
                    + build_frame(OP_BINARY, b"b") + build_frame(OP_PING, b"2"))
        got = [client.recv_frame() for _ in range(4)]
        assert [(f.opcode, f.payload) for f in got] == [
            (OP_TEXT, b"a"), (OP_PONG, b"1"), (OP_BINARY, b"b"), (OP_PONG, b"2"),
        ]


# ----------------------------------------------------------------------------
# RFC 6455 §5.2 reserved bits — Autobahn 3.*
# ----------------------------------------------------------------------------

#: (frame kind, opcode, payload) for the frame that carries the reserved bits.
RSV_CARRIERS = [
    ("text", OP_TEXT, b"with rsv"),
    ("binary", OP_BINARY, b"\x00\xff"),
    ("ping", OP_PING, b"ping"),
    ("close", OP_CLOSE, close_payload(1000)),
]


class TestReservedBits_5_2:
    """RFC 6455 §5.2 ("RSV1, RSV2, RSV3 MUST be 0 unless an extension is
    negotiated that defines meanings for non-zero values") — Autobahn 3.1-3.7,
    strictly: what came before the bad frame is answered first, nothing after."""

    @pytest.mark.parametrize("rsv", range(1, 8))
    @pytest.mark.parametrize(
        ("opcode", "payload"),
        [(op, data) for _, op, data in RSV_CARRIERS],
        ids=[kind for kind, _, _ in RSV_CARRIERS],
    )
    def test_reserved_bits_without_extension_are_1002_after_earlier_echo(
        self, client: RawClient, rsv: int, opcode: int, payload: bytes,
    ) -> None:
        bad = build_frame(opcode, payload, rsv1=bool(rsv & 4), rsv2=bool(rsv & 2),
                          rsv3=bool(rsv & 1))
        client.send(build_frame(OP_TEXT, b"before") + bad + build_frame(OP_PING, b"after"))
        expect_echo(client, OP_TEXT, b"before")
        expect_close(client, 1002)  # and no pong for the ping behind the bad frame

    def test_reserved_bits_written_byte_by_byte(self, client: RawClient) -> None:
        """Autobahn 3.4: the same, with every byte in its own write."""
        data = (build_frame(OP_TEXT, b"before") + build_frame(OP_TEXT, b"x", rsv1=True)
                + build_frame(OP_PING, b"after"))
        chopped(client, data, 1)
        expect_echo(client, OP_TEXT, b"before")
        expect_close(client, 1002)


# ----------------------------------------------------------------------------
# RFC 6455 §5.2 opcodes — Autobahn 4.*
# ----------------------------------------------------------------------------


class TestOpcodes_5_2:
    """RFC 6455 §5.2 ("If an unknown opcode is received, the receiving endpoint
    MUST _Fail the WebSocket Connection_"): %x3-7 reserved non-control and
    %xB-F reserved control opcodes — Autobahn 4.1.* and 4.2.*."""

    @pytest.mark.parametrize("payload", [b"", b"reserved payload"], ids=["empty", "payload"])
    @pytest.mark.parametrize("opcode", [*range(3, 8), *range(11, 16)])
    def test_reserved_opcode_is_1002_after_earlier_echo(
        self, client: RawClient, opcode: int, payload: bytes,
    ) -> None:
        client.send(build_frame(OP_TEXT, b"before") + build_frame(opcode, payload)
                    + build_frame(OP_PING, b"after"))
        expect_echo(client, OP_TEXT, b"before")
        expect_close(client, 1002)

    @pytest.mark.parametrize("opcode", [5, 13])
    def test_reserved_opcode_in_a_separate_write(self, client: RawClient, opcode: int) -> None:
        """Autobahn 4.1.4/4.2.4 send the bad frame frame-wise: the first message is
        echoed before the bad frame is even written."""
        client.send(build_frame(OP_TEXT, b"before"))
        expect_echo(client, OP_TEXT, b"before")
        client.send(build_frame(opcode, b"x"))
        client.send(build_frame(OP_PING, b"after"))
        expect_close(client, 1002)


# ----------------------------------------------------------------------------
# RFC 6455 §5.4 fragmentation — Autobahn 5.*
# ----------------------------------------------------------------------------

FRAGMENTINGS: dict[str, list[bytes]] = {
    "two": [b"fragment1", b"fragment2"],
    "one-byte-each": [bytes([b]) for b in b"fragmented"],
    "empty-first-and-last": [b"", b"middle", b""],
    "all-empty": [b"", b"", b""],
    "multibyte-split": [b"\xce\xba\xe1", b"\xbd\xb9\xcf\x83\xce", b"\xbc\xce\xb5"],
}


class TestFragmentation_5_4:
    """RFC 6455 §5.4 (a message in frames: opcode on the first, continuations after,
    FIN on the last; control frames may be injected but are never fragmented)
    and §5.5 — Autobahn 5.1-5.20."""

    @pytest.mark.parametrize("writes", ["one-write", "frame-per-write", "byte-chopped"])
    @pytest.mark.parametrize("pieces", FRAGMENTINGS.values(), ids=FRAGMENTINGS.keys())
    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
    def test_fragmented_message_is_echoed_whole(
        self, client: RawClient, opcode: int, pieces: list[bytes], writes: str,
    ) -> None:
        last = len(pieces) - 1
        frames = [build_frame(opcode if i == 0 else OP_CONT, piece, fin=i == last)
                  for i, piece in enumerate(pieces)]
        if writes == "one-write":
            client.send(b"".join(frames))
        elif writes == "frame-per-write":
            frame_per_write(client, frames)
        else:
            chopped(client, b"".join(frames), 1)
        expect_echo(client, opcode, b"".join(pieces))

    @pytest.mark.parametrize("opcode", [OP_PONG, OP_CLOSE], ids=["pong", "close"])
    def test_fragmented_control_frame_is_1002(self, client: RawClient, opcode: int) -> None:
        """Autobahn 5.2 (pong); a fragmented close is the same rule (§5.5)."""
        first = b"frag" if opcode == OP_PONG else close_payload(1000)
        client.send(build_frame(opcode, first, fin=False) + build_frame(OP_CONT, b"ment"))
        expect_close(client, 1002)

    @pytest.mark.parametrize("fin", [True, False], ids=["fin", "no-fin"])
    @pytest.mark.parametrize("writes", ["one-write", "byte-chopped"])
    def test_continuation_without_a_start_is_1002(
        self, client: RawClient, fin: bool, writes: str,
    ) -> None:
        """Autobahn 5.9-5.14."""
        data = build_frame(OP_CONT, b"non-continuation payload", fin=fin)
        data += build_frame(OP_TEXT, b"Hello, world!")
        if writes == "one-write":
            client.send(data)
        else:
            chopped(client, data, 1)
        expect_close(client, 1002)

    @pytest.mark.parametrize("fin", [True, False], ids=["fin", "no-fin"])
    def test_stray_continuation_after_a_complete_message_is_1002(
        self, client: RawClient, fin: bool,
    ) -> None:
        """Autobahn 5.15-5.17: the finished message is echoed, then the failure."""
        client.send(
            build_frame(OP_TEXT, b"fragment1", fin=False) + build_frame(OP_CONT, b"fragment2")
            + build_frame(OP_CONT, b"fragment3", fin=fin)
            + build_frame(OP_TEXT, b"fragment4", fin=False) + build_frame(OP_CONT, b"fragment5"),
        )
        expect_echo(client, OP_TEXT, b"fragment1fragment2")
        expect_close(client, 1002)

    @pytest.mark.parametrize("second_fin", [True, False], ids=["fin", "no-fin"])
    @pytest.mark.parametrize("second", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
    def test_new_data_frame_inside_a_fragmented_message_is_1002(
        self, client: RawClient, second: int, second_fin: bool,
    ) -> None:
        """Autobahn 5.18: both frames of a two-fragment message carry an opcode."""
        client.send(build_frame(OP_TEXT, b"fragment1", fin=False)
                    + build_frame(second, b"fragment2", fin=second_fin))
        expect_close(client, 1002)

    @pytest.mark.parametrize("writes", ["one-write", "frame-per-write", "byte-chopped"])
    def test_ping_between_fragments_is_answered_and_message_intact(
        self, client: RawClient, writes: str,
    ) -> None:
        """Autobahn 5.6-5.8: the pong comes before the (only then complete) echo."""
        frames = [build_frame(OP_TEXT, b"fragment1", fin=False),
                  build_frame(OP_PING, b"ping payload"),
                  build_frame(OP_CONT, b"fragment2", fin=False),
                  build_frame(OP_PONG, b"unsolicited"),
                  build_frame(OP_CONT, b"fragment3")]
        if writes == "one-write":
            client.send(b"".join(frames))
        elif writes == "frame-per-write":
            frame_per_write(client, frames)
        else:
            chopped(client, b"".join(frames), 1)
        pong = client.recv_frame()
        assert (pong.opcode, pong.payload) == (OP_PONG, b"ping payload")
        expect_echo(client, OP_TEXT, b"fragment1fragment2fragment3")

    def test_pong_arrives_while_the_message_is_still_open(self, client: RawClient) -> None:
        """Autobahn 5.19/5.20 without sleeps: each fragment is sent only after the
        pong to the ping behind the previous one has come back, so the server
        answers control frames in the middle of a message it has not finished."""
        pieces = [f"fragment{i}".encode() for i in range(1, 6)]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            client.send(build_frame(OP_TEXT if i == 0 else OP_CONT, piece, fin=last))
            if not last:
                client.send(build_frame(OP_PING, f"pongme {i}".encode()))
                pong = client.recv_frame()
                assert (pong.opcode, pong.payload) == (OP_PONG, f"pongme {i}".encode())
        expect_echo(client, OP_TEXT, b"".join(pieces))


# ----------------------------------------------------------------------------
# RFC 6455 §8.1 UTF-8 — Autobahn 6.*
# ----------------------------------------------------------------------------

VALID_UTF8: dict[str, bytes] = {
    "empty (6.1)": b"",
    "mixed (6.2)": "Hello-\u00b5@\u00df\u00f6\u00e4\u00fc\u00e0\u00e1-UTF-8!!".encode(),
    "kosme (6.5)": "\u03ba\u1f79\u03c3\u03bc\u03b5".encode(),
    "U+0000": b"\x00",
    "U+007F last 1-byte": b"\x7f",
    "U+0080 first 2-byte": b"\xc2\x80",
    "U+07FF last 2-byte": b"\xdf\xbf",
    "U+0800 first 3-byte": b"\xe0\xa0\x80",
    "U+D7FF below surrogates": b"\xed\x9f\xbf",
    "U+E000 above surrogates": b"\xee\x80\x80",
    "U+FDD0 noncharacter": b"\xef\xb7\x90",
    "U+FFFD": b"\xef\xbf\xbd",
    "U+FFFE noncharacter": b"\xef\xbf\xbe",
    "U+FFFF last 3-byte": b"\xef\xbf\xbf",
    "U+10000 first 4-byte": b"\xf0\x90\x80\x80",
    "U+1F600": b"\xf0\x9f\x98\x80",
    "U+10FFFF last code point": b"\xf4\x8f\xbf\xbf",
    "every length": "a\u00e9\u20ac\U0001f600\U0010ffff\uffff".encode(),
}

INVALID_UTF8: dict[str, bytes] = {
    "lone continuation 0x80": b"\x80",
    "lone continuation 0xbf mid-text": b"a\xbfb",
    "lonely 2-byte start": b"\xc3 ",
    "lonely 3-byte start": b"\xe2 ",
    "lonely 4-byte start": b"\xf0 ",
    "impossible 0xfe": b"\xfe",
    "impossible 0xff": b"a\xff",
    "overlong '/' 2-byte": b"\xc0\xaf",
    "overlong '/' 3-byte": b"\xe0\x80\xaf",
    "overlong '/' 4-byte": b"\xf0\x80\x80\xaf",
    "overlong NUL": b"\xc0\x80",
    "max overlong 2-byte": b"\xc1\xbf",
    "max overlong 3-byte": b"\xe0\x9f\xbf",
    "max overlong 4-byte": b"\xf0\x8f\xbf\xbf",
    "surrogate U+D800": b"\xed\xa0\x80",
    "surrogate U+DBFF": b"\xed\xaf\xbf",
    "surrogate U+DFFF": b"\xed\xbf\xbf",
    "surrogate pair U+D800 U+DC00": b"\xed\xa0\x80\xed\xb0\x80",
    "U+110000": b"\xf4\x90\x80\x80",
    "0xf5 lead (above U+10FFFF)": b"\xf5\x80\x80\x80",
    "0xf7 lead (U+1FFFFF)": b"\xf7\xbf\xbf\xbf",
    "5-byte form": b"\xf8\x88\x80\x80\x80",
    "6-byte form": b"\xfc\x84\x80\x80\x80\x80",
    "truncated 2-byte at end": b"abc\xc3",
    "truncated 3-byte at end": b"abc\xe2\x82",
    "truncated 4-byte at end": b"abc\xf0\x9f\x98",
    "truncated sequence mid-text": b"a\xe2\x82b",
    "kosme + U+110000 + edited (6.4)": "\u03ba\u1f79\u03c3\u03bc\u03b5".encode()
    + b"\xf4\x90\x80\x80edited",
}


def _send_text(client: RawClient, payload: bytes, delivery: str) -> None:
    if delivery == "one-frame":
        client.send(build_frame(OP_TEXT, payload))
    elif delivery == "fragment-per-byte":
        client.send(b"".join(fragments(OP_TEXT, payload, 1)))
    else:  # "byte-chopped": one frame, one byte per write
        chopped(client, build_frame(OP_TEXT, payload), 1)


class TestUtf8_8_1:
    """RFC 6455 §8.1 and §5.6 (text payloads are UTF-8, RFC 3629: no overlongs, no
    surrogates, nothing above U+10FFFF; otherwise _Fail the WebSocket Connection_
    with 1007, §7.4.1), validated across fragment boundaries, and as early as the
    invalid byte arrives (fail fast) — Autobahn 6.*."""

    @pytest.mark.parametrize("delivery", ["one-frame", "fragment-per-byte", "byte-chopped"])
    @pytest.mark.parametrize("payload", VALID_UTF8.values(), ids=VALID_UTF8.keys())
    def test_valid_utf8_is_echoed(self, client: RawClient, payload: bytes, delivery: str) -> None:
        payload.decode("utf-8")  # the table itself is right
        _send_text(client, payload, delivery)
        expect_echo(client, OP_TEXT, payload)

    @pytest.mark.parametrize("delivery", ["one-frame", "fragment-per-byte"])
    @pytest.mark.parametrize("payload", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
    def test_invalid_utf8_is_1007(self, client: RawClient, payload: bytes, delivery: str) -> None:
        with pytest.raises(UnicodeDecodeError):
            payload.decode("utf-8")  # the table itself is right
        _send_text(client, payload, delivery)
        expect_close(client, 1007)

    def test_valid_message_before_an_invalid_one_is_echoed_first(self, client: RawClient) -> None:
        client.send(build_frame(OP_TEXT, "\u03ba\u1f79\u03c3\u03bc\u03b5".encode())
                    + build_frame(OP_TEXT, b"\xed\xa0\x80") + build_frame(OP_PING, b"after"))
        expect_echo(client, OP_TEXT, "\u03ba\u1f79\u03c3\u03bc\u03b5".encode())
        expect_close(client, 1007)

    def test_binary_messages_are_not_utf8_checked(self, client: RawClient) -> None:
        client.send(build_frame(OP_BINARY, b"\xed\xa0\x80\xff\xc0\xaf"))
        expect_echo(client, OP_BINARY, b"\xed\xa0\x80\xff\xc0\xaf")

    @pytest.mark.parametrize(
        "prefix",
        [b"\xff", b"ok\xc0\xaf", b"\xed\xa0\x80", b"abc\xf4\x90\x80\x80",
         b"\xce\xba\xe1\xbd\xb9\xf5"],
        ids=["0xff", "overlong", "surrogate", "above-U+10FFFF", "0xf5-lead"],
    )
    def test_fail_fast_inside_an_unfinished_frame(self, client: RawClient, prefix: bytes) -> None:
        """Autobahn 6.4.3/6.4.4: only the first 10 payload bytes of a 10,000-byte
        frame are sent; the 1007 must come without the other 9,990."""
        payload = (prefix + b"0123456789")[:10] + b"x" * 9990
        frame = build_frame(OP_TEXT, payload)
        client.send(frame[:len(frame) - 9990])  # 4-byte header, mask, 10 bytes
        expect_close(client, 1007)

    def test_fail_fast_across_fragments(self, client: RawClient) -> None:
        """Autobahn 6.4.1/6.4.2: a valid first fragment, then a fragment holding only
        the octet that makes the sequence invalid; the final fragment is never
        sent."""
        part1 = "\u03ba\u1f79\u03c3\u03bc\u03b5".encode() + b"\xf4"
        client.send(build_frame(OP_TEXT, part1, fin=False))
        # Still open: the first fragment is a valid prefix (a ping proves it).
        client.send(build_frame(OP_PING, b"alive"))
        pong = client.recv_frame()
        assert (pong.opcode, pong.payload) == (OP_PONG, b"alive")
        client.send(build_frame(OP_CONT, b"\x90", fin=False))
        expect_close(client, 1007)

    def test_fail_fast_in_the_middle_of_a_frame_sent_in_chops(self, client: RawClient) -> None:
        """Autobahn 6.4.3 without timing: the frame's valid first chop, then the
        invalid second chop; the third never goes out."""
        good, bad, rest = "\u03ba\u1f79\u03c3\u03bc\u03b5".encode(), b"\xf4\x90\x80\x80", b"edited"
        frame = build_frame(OP_TEXT, good + bad + rest)
        header = len(frame) - len(good + bad + rest)
        client.send(frame[:header + len(good)])
        client.send(frame[header + len(good):header + len(good) + len(bad)])
        expect_close(client, 1007)


# ----------------------------------------------------------------------------
# RFC 6455 §5.5.1 / §7 closing — Autobahn 7.*
# ----------------------------------------------------------------------------

VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999]


class TestClose_7:
    """RFC 6455 §5.5.1 (the close frame: optional 2-byte code plus UTF-8 reason;
    echo the code; nothing is sent after it), §7.1 (the server closes TCP first)
    and §7.4 (which codes may appear on the wire) — Autobahn 7.*."""

    def test_message_then_close_is_echoed_then_closed(self, client: RawClient) -> None:
        """7.1.1."""
        client.send(build_frame(OP_TEXT, b"Hello World!")
                    + build_frame(OP_CLOSE, close_payload(1000)))
        expect_echo(client, OP_TEXT, b"Hello World!")
        expect_close(client, 1000)

    @pytest.mark.parametrize(
        "after",
        [build_frame(OP_CLOSE, close_payload(1000)), build_frame(OP_PING, b"late ping"),
         build_frame(OP_TEXT, b"late text"),
         build_frame(OP_BINARY, b"late", fin=False) + build_frame(OP_CONT, b" binary"),
         build_frame(0x3, b"garbage")],
        ids=["second-close (7.1.2)", "ping (7.1.3)", "text (7.1.4)", "fragmented-binary",
             "reserved-opcode"],
    )
    def test_nothing_after_close_is_answered(self, client: RawClient, after: bytes) -> None:
        """Data after the close frame is not echoed, pings not answered; one close."""
        client.send(build_frame(OP_CLOSE, close_payload(1000)) + after)
        expect_close(client, 1000)

    def test_close_inside_a_fragmented_message(self, client: RawClient) -> None:
        """7.1.5: control frames may come between fragments; the unfinished message
        is dropped and the close echoed."""
        client.send(build_frame(OP_TEXT, b"fragment1", fin=False)
                    + build_frame(OP_CLOSE, close_payload(1000))
                    + build_frame(OP_CONT, b"fragment2"))
        expect_close(client, 1000)

    def test_empty_close_is_answered_without_a_code(self, client: RawClient) -> None:
        """7.3.1: no code in, so no code (or 1000) out; never 1005 on the wire."""
        client.send(build_frame(OP_CLOSE, b""))
        frame = client.recv_frame()
        assert frame.opcode == OP_CLOSE and frame.close_code in (None, 1000), describe(frame)
        assert client.read_until_eof() == b""

    def test_one_byte_close_payload_is_1002(self, client: RawClient) -> None:
        """7.3.2."""
        client.send(build_frame(OP_CLOSE, b"\x03"))
        expect_close(client, 1002)

    @pytest.mark.parametrize(
        "reason", [b"", b"Hello World!", "bye \u2713".encode(), b"r" * 123],
        ids=["no-reason (7.3.3)", "reason (7.3.4)", "utf8-reason", "123-bytes (7.3.5)"],
    )
    def test_close_code_and_reason_are_echoed(self, client: RawClient, reason: bytes) -> None:
        client.send(build_frame(OP_CLOSE, close_payload(1000, reason)))
        expect_close(client, 1000, reason=reason)

    def test_close_payload_over_125_bytes_is_1002(self, client: RawClient) -> None:
        """7.3.6: a 124-byte reason makes a 126-byte control frame."""
        client.send(build_frame(OP_CLOSE, close_payload(1000, b"r" * 124)))
        expect_close(client, 1002)

    @pytest.mark.parametrize("reason", [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
                                        b"\xff", b"\xc0\xaf"])
    def test_close_reason_not_utf8_is_1007(self, client: RawClient, reason: bytes) -> None:
        """7.5.1."""
        client.send(build_frame(OP_CLOSE, close_payload(1000, reason)))
        expect_close(client, 1007)

    @pytest.mark.parametrize("code", VALID_CLOSE_CODES)
    def test_valid_close_codes_are_echoed(self, client: RawClient, code: int) -> None:
        """7.7.*."""
        client.send(build_frame(OP_CLOSE, close_payload(code)))
        expect_close(client, code)

    @pytest.mark.parametrize(
        "code",
        [1012, 1013, pytest.param(1014, marks=pytest.mark.xfail(
            strict=True,
            reason="known limitation: close code 1014 (Bad Gateway, IANA-registered like "
            "1012/1013) is failed with 1002 because wsproto 1.3.2's parser rejects codes "
            "its CloseReason enum lacks, before wsnet sees the frame",
        ))],
    )
    def test_iana_registered_close_codes_are_echoed(self, client: RawClient, code: int) -> None:
        """§7.4.2/§11.7: 1000-2999 codes defined through the IANA registry are
        valid on the wire; an endpoint that knows 1012 and 1013 must not fail 1014."""
        client.send(build_frame(OP_CLOSE, close_payload(code)))
        expect_close(client, code)

    @pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
    def test_invalid_close_codes_are_1002(self, client: RawClient, code: int) -> None:
        """7.9.*: unassigned, below 1000, or §7.4.1's "MUST NOT be set" codes."""
        client.send(build_frame(OP_CLOSE, close_payload(code)))
        expect_close(client, 1002)

    @pytest.mark.parametrize("code", [5000, 65535])
    def test_codes_above_4999_are_1002(self, client: RawClient, code: int) -> None:
        """7.13.* (informational in Autobahn): §7.4.2 defines nothing above 4999;
        wsnet's policy is to fail them. Pinned so a change is deliberate."""
        client.send(build_frame(OP_CLOSE, close_payload(code)))
        expect_close(client, 1002)


# ----------------------------------------------------------------------------
# RFC 6455 §10.4 limits and performance at small scale — Autobahn 9.*
# ----------------------------------------------------------------------------


class TestLimits_10_4:
    """RFC 6455 §10.4 (implementation-specific limits; the echo app allows 16 MiB
    and 131,072 fragments) — Autobahn 9.1-9.8, at 1 MiB and 1,000 messages."""

    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
    def test_1mib_in_one_frame(self, client: RawClient, opcode: int) -> None:
        """9.1.4 / 9.2.4."""
        payload = random_text(MiB).encode() if opcode == OP_TEXT else random_bytes(MiB)
        client.send(build_frame(opcode, payload))
        expect_echo(client, opcode, payload, timeout=15)

    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
    def test_1mib_in_64_byte_fragments(self, client: RawClient, opcode: int) -> None:
        """9.3.* / 9.4.*: 16,384 frames; text fragments split characters."""
        payload = random_text(MiB).encode() if opcode == OP_TEXT else random_bytes(MiB)
        client.send(b"".join(fragments(opcode, payload, 64)))
        expect_echo(client, opcode, payload, timeout=15)

    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
    def test_1mib_frame_in_64_byte_writes(self, client: RawClient, opcode: int) -> None:
        """9.5.* / 9.6.*: one frame, sent in chops."""
        payload = random_text(MiB).encode() if opcode == OP_TEXT else random_bytes(MiB)
        chopped(client, build_frame(opcode, payload), 64)
        expect_echo(client, opcode, payload, timeout=15)

    @pytest.mark.parametrize("writes", ["one-write", "write-per-message"])
    def test_1000_small_messages_back_to_back(self, client: RawClient, writes: str) -> None:
        """9.7.* / 9.8.* pipelined: every message echoed, in order."""
        messages = [(OP_TEXT if i % 2 else OP_BINARY, f"message {i:04d} \u2713".encode())
                    for i in range(1000)]
        frames = [build_frame(op, data) for op, data in messages]
        if writes == "one-write":
            client.send(b"".join(frames))
        else:
            frame_per_write(client, frames)
        for opcode, payload in messages:
            expect_echo(client, opcode, payload)

    def test_200_round_trips(self, client: RawClient) -> None:
        """9.7.* as Autobahn does it: one message at a time."""
        for i in range(200):
            payload = random_bytes(16 + i)
            client.send(build_frame(OP_BINARY, payload))
            expect_echo(client, OP_BINARY, payload)


# ----------------------------------------------------------------------------
# RFC 6455 §5.4 auto-fragmentation — Autobahn 10.*
# ----------------------------------------------------------------------------


class TestAutoFragmentation_5_4:
    """RFC 6455 §5.4 (an intermediary or sender may fragment at any size; the
    receiver reassembles) — Autobahn 10.1.1: 64 KiB sent in 1,300-byte frames."""

    @pytest.mark.parametrize(
        ("opcode", "size"),
        [(OP_TEXT, 1300), (OP_BINARY, 1300), (OP_TEXT, 1299), (OP_BINARY, 1299), (OP_TEXT, 1)],
        ids=["text-1300", "binary-1300", "text-1299", "binary-1299", "text-1"],
    )
    def test_64kib_auto_fragmented(self, client: RawClient, opcode: int, size: int) -> None:
        payload = random_text(65536).encode() if opcode == OP_TEXT else random_bytes(65536)
        frames = fragments(opcode, payload, size)
        if size == 1:
            client.send(b"".join(frames))  # 65,536 frames in one write
        else:
            frame_per_write(client, frames)
        expect_echo(client, opcode, payload, timeout=15)


# ----------------------------------------------------------------------------
# RFC 7692 permessage-deflate — Autobahn 12.* and 13.*
# ----------------------------------------------------------------------------

#: ClientPerMessageDeflateFactory arguments: the offers Autobahn 13.* makes, and more.
DEFLATE_OFFERS: dict[str, dict[str, Any]] = {
    "default": {},
    "client_max_window_bits-not-offered": {"client_max_window_bits": None},
    "client_no_context_takeover": {"client_no_context_takeover": True},
    "server_no_context_takeover": {"server_no_context_takeover": True},
    **{f"server_max_window_bits={b}": {"server_max_window_bits": b} for b in range(9, 16)},
    "client_max_window_bits=9": {"client_max_window_bits": 9},
    "client_max_window_bits=15": {"client_max_window_bits": 15},
    "everything-smallest": {
        "server_no_context_takeover": True, "client_no_context_takeover": True,
        "server_max_window_bits": 9, "client_max_window_bits": 9,
    },
}

DEFLATE_SIZES = [16, KiB, 64 * KiB, MiB]


def deflate_messages() -> list[str | bytes]:
    """Text and binary, random and compressible, at every size."""
    messages: list[str | bytes] = []
    for size in DEFLATE_SIZES:
        messages += [random_text(size), compressible_text(size),
                     random_bytes(size), compressible_bytes(size)]
    return messages


def check_response_matches_offer(offer: dict[str, Any], params: dict[str, str | None]) -> None:
    """RFC 7692 §7.1: what any server's answer to this offer may contain."""
    known = {"server_no_context_takeover", "client_no_context_takeover",
             "server_max_window_bits", "client_max_window_bits"}
    assert set(params) <= known, params
    for flag in ("server_no_context_takeover", "client_no_context_takeover"):
        assert params.get(flag) is None, f"{flag} takes no value"
    # §7.1.1.1: an offer with server_no_context_takeover is accepted with it.
    if offer.get("server_no_context_takeover"):
        assert "server_no_context_takeover" in params
    # §7.1.2.1: accepted with server_max_window_bits, the same or smaller.
    offered_server_bits = offer.get("server_max_window_bits")
    if offered_server_bits is not None:
        value = params.get("server_max_window_bits")
        assert value is not None and 8 <= int(value) <= offered_server_bits, params
    elif "server_max_window_bits" in params:
        assert 8 <= int(params["server_max_window_bits"] or "0") <= 15, params
    # §7.1.2.2: client_max_window_bits only if offered, and not above the offer.
    offered_client_bits = offer.get("client_max_window_bits", True)
    if "client_max_window_bits" in params:
        assert offered_client_bits is not None, "client_max_window_bits was not offered"
        value = params["client_max_window_bits"]
        assert value is not None and 8 <= int(value) <= 15
        if offered_client_bits is not True:
            assert int(value) <= offered_client_bits


class TestPermessageDeflate_RFC7692:
    """RFC 7692 §7.1 (negotiating permessage-deflate parameters) and §7.2
    (compressing and inflating messages) — Autobahn 12.* (default offer, messages
    of many sizes) and 13.* (the same across different parameter offers)."""

    @pytest.mark.parametrize("offer", DEFLATE_OFFERS.values(), ids=DEFLATE_OFFERS.keys())
    def test_websockets_offer_negotiates_consistently_and_echoes(
        self, echo: ServerProcess, offer: dict[str, Any],
    ) -> None:
        factory = ClientPerMessageDeflateFactory(**offer)

        async def scenario() -> None:
            async with ws_connect(
                echo.url, compression=None, extensions=[factory], max_size=4 * MiB,
            ) as ws:
                assert ws.response is not None
                header = ws.response.headers.get("Sec-WebSocket-Extensions")
                assert header is not None, "the offer was declined"
                params = parse_pmd_response(header)
                check_response_matches_offer(offer, params)
                # wsnet's documented choices (config.py): it always imposes both
                # no-context-takeover flags and echoes server_max_window_bits.
                assert "server_no_context_takeover" in params
                assert "client_no_context_takeover" in params
                server_bits = offer.get("server_max_window_bits")
                assert params.get("server_max_window_bits") == (
                    None if server_bits is None else str(server_bits)
                )
                # The objects websockets built from that answer agree with it.
                (extension,) = ws.protocol.extensions
                assert isinstance(extension, PerMessageDeflate)
                assert extension.remote_no_context_takeover is True
                assert extension.local_no_context_takeover is True
                assert extension.remote_max_window_bits == (server_bits or 15)
                answered = params.get("client_max_window_bits")
                client_bits = offer.get("client_max_window_bits", True)
                expected_local = int(answered) if answered else (
                    client_bits if isinstance(client_bits, int) and client_bits is not True
                    else 15
                )
                assert extension.local_max_window_bits == expected_local

                for message in deflate_messages():
                    await ws.send(message)
                    echoed = await asyncio.wait_for(ws.recv(), 15)
                    same = type(echoed) is type(message) and echoed == message
                    assert same, f"{type(message).__name__} of {len(message)} not echoed"

        run(scenario(), timeout=60)

    def test_server_max_window_bits_8_is_declined_and_connection_works(
        self, echo: ServerProcess,
    ) -> None:
        """13.3/13.5 offer server_max_window_bits=8, which zlib cannot produce:
        declining is the answer (§7.1.2.1 lets a server decline), and the
        connection then carries uncompressed messages."""
        factory = ClientPerMessageDeflateFactory(server_max_window_bits=8)

        async def scenario() -> None:
            async with ws_connect(
                echo.url, compression=None, extensions=[factory], max_size=4 * MiB,
            ) as ws:
                assert ws.response is not None
                assert "Sec-WebSocket-Extensions" not in ws.response.headers
                assert list(ws.protocol.extensions) == []
                for message in (random_text(64 * KiB), compressible_bytes(64 * KiB), "", b"x"):
                    await ws.send(message)
                    echoed = await asyncio.wait_for(ws.recv(), 10)
                    assert type(echoed) is type(message) and echoed == message

        run(scenario())

    def test_declined_offer_means_rsv1_is_still_a_protocol_error(
        self, echo: ServerProcess,
    ) -> None:
        with RawClient(echo.port, timeout=DEADLINE) as raw:
            headers = raw.handshake(extensions=f"{PMD}; server_max_window_bits=8")
            assert "sec-websocket-extensions" not in headers
            raw.send(build_frame(OP_TEXT, b"plain") + build_frame(OP_TEXT, deflate_raw(b"x" * 200),
                                                                   rsv1=True))
            expect_echo(raw, OP_TEXT, b"plain")
            expect_close(raw, 1002)

    def test_first_acceptable_of_several_offers_is_chosen(self, echo: ServerProcess) -> None:
        """13.7: offers in order of preference; the undoable first one is skipped."""
        offers = (f"{PMD}; server_max_window_bits=8; client_max_window_bits, "
                  f"{PMD}; server_max_window_bits=10; client_max_window_bits, {PMD}")
        with RawClient(echo.port, timeout=DEADLINE) as raw:
            headers = raw.handshake(extensions=offers)
            params = parse_pmd_response(headers["sec-websocket-extensions"])
            check_response_matches_offer(
                {"server_max_window_bits": 10, "client_max_window_bits": True}, params,
            )
            payload = window_probe(10)
            raw.send(build_frame(OP_BINARY, deflate_raw(payload), rsv1=True))
            frame = raw.recv_frame()
            assert frame.rsv1, describe(frame)
            assert inflate_with_window(frame.payload, 10) == payload

    @pytest.mark.parametrize("bits", range(9, 16))
    def test_server_compresses_within_the_negotiated_window(
        self, echo: ServerProcess, bits: int,
    ) -> None:
        """§7.1.2.1: with server_max_window_bits=N the server's messages must inflate
        with a 2**N-byte window. The probe repeats data at a distance just past
        2**N, which a compressor using any larger window would reference."""
        payload = window_probe(bits)
        with RawClient(echo.port, timeout=DEADLINE) as raw:
            headers = raw.handshake(extensions=f"{PMD}; server_max_window_bits={bits}")
            params = parse_pmd_response(headers["sec-websocket-extensions"])
            check_response_matches_offer({"server_max_window_bits": bits}, params)
            agreed = int(params["server_max_window_bits"] or "0")
            raw.send(build_frame(OP_BINARY, deflate_raw(payload), rsv1=True))
            frame = raw.recv_frame()
            assert frame.opcode == OP_BINARY and frame.fin and frame.rsv1, describe(frame)
            assert inflate_with_window(frame.payload, agreed) == payload
            # Repeats well inside the window must be used (so the check above is
            # not vacuous: this server does compress with the window it agreed).
            near = random.Random(-bits).randbytes(1 << (bits - 2)) * 8
            raw.send(build_frame(OP_BINARY, deflate_raw(near), rsv1=True))
            frame = raw.recv_frame()
            assert frame.rsv1 and len(frame.payload) < len(near) // 2, describe(frame)
            assert inflate_with_window(frame.payload, agreed) == near

    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
    def test_compressed_message_in_fragments(self, echo: ServerProcess, opcode: int) -> None:
        """§6.1: RSV1 on the first frame only; the compressed bytes span the frames.
        A message sent uncompressed on the same connection is fine too (§6)."""
        payload = compressible_text(20_000).encode() if opcode == OP_TEXT else window_probe(12)
        body = deflate_raw(payload)
        third = len(body) // 3
        frames = [build_frame(opcode, body[:third], fin=False, rsv1=True),
                  build_frame(OP_CONT, body[third:2 * third], fin=False),
                  build_frame(OP_PING, b"in between"),
                  build_frame(OP_CONT, body[2 * third:])]
        with RawClient(echo.port, timeout=DEADLINE) as raw:
            params = parse_pmd_response(raw.handshake(extensions=PMD)["sec-websocket-extensions"])
            check_response_matches_offer({}, params)
            bits = int(params.get("server_max_window_bits") or 15)
            raw.send(b"".join(frames) + build_frame(opcode, payload))
            pong = raw.recv_frame()
            assert (pong.opcode, pong.payload) == (OP_PONG, b"in between")
            for _ in range(2):  # the compressed message, then the plain one
                frame = raw.recv_frame()
                assert frame.opcode == opcode and frame.fin, describe(frame)
                got = inflate_with_window(frame.payload, bits) if frame.rsv1 else frame.payload
                assert got == payload

    @pytest.mark.parametrize(
        "bad",
        [build_frame(OP_CONT, b"x", rsv1=True), build_frame(OP_PING, b"x", rsv1=True)],
        ids=["rsv1-on-continuation", "rsv1-on-ping"],
    )
    def test_rsv1_outside_a_first_data_frame_is_1002(self, echo: ServerProcess, bad: bytes) -> None:
        """§6.1: RSV1 marks the first frame of a compressed data message and
        nothing else; RSV2/RSV3 stay reserved."""
        with RawClient(echo.port, timeout=DEADLINE) as raw:
            raw.handshake(extensions=PMD)
            first = build_frame(OP_TEXT, deflate_raw(b"abc" * 50), fin=False, rsv1=True)
            raw.send(first + bad)
            expect_close(raw, 1002)

    def test_rsv2_is_still_reserved_with_deflate(self, echo: ServerProcess) -> None:
        with RawClient(echo.port, timeout=DEADLINE) as raw:
            raw.handshake(extensions=PMD)
            raw.send(build_frame(OP_TEXT, b"x", rsv2=True))
            expect_close(raw, 1002)


def test_echo_server_survived_the_module(echo: ServerProcess) -> None:
    """Last in the file: every violation above was a closed connection, never a
    crash or a traceback."""
    assert echo.alive()
    assert "Traceback" not in echo.stderr_text()
