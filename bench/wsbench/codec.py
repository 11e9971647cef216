"""The load generator's WebSocket wire as pure functions on bytes: the client's
upgrade request and the check of the server's 101, masked client frames, the scan
of server frames that the receive path runs on every read, and permessage-deflate
inflation. No sockets and no state (``bench/loadgen.py`` keeps each connection's),
so that ``tests/test_bench_codec.py`` can hold it against wsproto.

Built for ``loadgen.py``'s hot path: plain functions, ints and tuples, no objects
per frame. Imported by ``loadgen.py`` run as a script (``bench/`` is then its
``sys.path[0]``), so it imports nothing but the standard library.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from dataclasses import dataclass

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TAIL = b"\x00\x00\xff\xff"  # RFC 7692 §7.2.2: appended before inflating a message

#: RFC 6455 §5.2: the first byte's bits, and the opcodes.
FIN = 0x80
RSV1 = 0x40
OPCODE = 0x0F
OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
#: The first byte of a whole, uncompressed text frame: what the fast path counts in.
TEXT_FINAL = FIN | OP_TEXT

#: A frame in a read: (its first byte, where its payload starts, where it ends).
FrameSpan = tuple[int, int, int]


# -- the handshake -------------------------------------------------------------


def new_key() -> bytes:
    """A fresh Sec-WebSocket-Key (RFC 6455 §4.1: base64 of 16 random bytes)."""
    return base64.b64encode(os.urandom(16))


def accept_for(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept a server must answer ``key`` with (§4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def upgrade_request(
    *, host: bytes, port: int, path: bytes, query: bytes, key: bytes, deflate: bool,
) -> bytes:
    """The client's GET (§4.1) for ``path?query``; with ``deflate`` it offers
    ``permessage-deflate; client_max_window_bits`` (RFC 7692)."""
    ext = (
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        if deflate
        else b""
    )
    return (
        b"GET %s?%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
        b"%s\r\n"
    ) % (path, query, host, port, key, ext)


class HandshakeError(Exception):
    """The server's answer is not a valid 101 for our key; ``reason`` is the error
    count's name (``http_<status>``, ``bad_accept``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a 101 agreed to."""

    #: permessage-deflate was negotiated: RSV1 frames are compressed.
    deflate: bool
    #: The server keeps its compression context between messages (it did not
    #: impose server_no_context_takeover): one inflater per connection.
    context_takeover: bool


def check_response(head: bytes, key: bytes) -> Accepted:
    """The response head (without its blank line) checked against ``key``;
    HandshakeError if it is not a 101 with the right Sec-WebSocket-Accept."""
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or status[1] != b"101":
        code = status[1].decode(errors="replace") if len(status) > 1 else "?"
        raise HandshakeError(f"http_{code}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"sec-websocket-accept") != accept_for(key):
        raise HandshakeError("bad_accept")
    ext = headers.get(b"sec-websocket-extensions", b"").lower()
    deflate = b"permessage-deflate" in ext
    return Accepted(deflate, deflate and b"server_no_context_takeover" not in ext)


# -- frames --------------------------------------------------------------------


def mask_frame(payload: bytes, opcode: int = OP_TEXT, key: bytes | None = None) -> bytes:
    """A final, masked client frame (RFC 6455 §5.3), with a fresh random key
    unless ``key`` (4 bytes) is given."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    if key is None:
        key = os.urandom(4)
    if n == 0:
        return head + key
    keystream = (key * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(n, "big")
    return head + key + body


class MaskedFrameError(ValueError):
    """A server frame with the mask bit set: a protocol error (§5.1)."""


def scan_frames(data: bytes) -> tuple[list[FrameSpan], int]:
    """Every complete server frame at the start of ``data``, as (first byte,
    payload start, payload end), and the offset where the incomplete rest (if
    any) begins. MaskedFrameError on a masked frame. Fragments and control frames
    are reported like any frame: reassembling is the caller's."""
    spans: list[FrameSpan] = []
    pos = 0
    n = len(data)
    while n - pos >= 2:
        length = data[pos + 1]
        if length < 126:
            start = pos + 2
        elif length == 126:
            if n - pos < 4:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
            start = pos + 4
        elif length == 127:
            if n - pos < 10:
                break
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            start = pos + 10
        else:
            raise MaskedFrameError(f"masked server frame at offset {pos}")
        end = start + length
        if end > n:
            break
        spans.append((data[pos], start, end))
        pos = end
    return spans, pos


def frame_size(buf: bytes) -> int:
    """Bytes needed to parse the frame at the start of ``buf`` (header and payload
    if the header is complete, else one more byte)."""
    if len(buf) >= 2:
        length = buf[1] & 0x7F
        if length < 126:
            return 2 + length
        if length == 126 and len(buf) >= 4:
            return 4 + int.from_bytes(buf[2:4], "big")
        if length == 127 and len(buf) >= 10:
            return 10 + int.from_bytes(buf[2:10], "big")
    return len(buf) + 1


# -- permessage-deflate ----------------------------------------------------------


def new_inflater() -> zlib._Decompress:
    """A raw-deflate inflater, for a connection whose server keeps its context."""
    return zlib.decompressobj(-15)


def inflate(payload: bytes, inflater: zlib._Decompress | None = None) -> bytes:
    """One compressed message (RFC 7692 §7.2.2), with the connection's inflater
    when the server keeps its context, else on its own; zlib.error if it is not
    deflate data."""
    if inflater is None:
        inflater = new_inflater()
    return inflater.decompress(payload + TAIL)
