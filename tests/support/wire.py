"""The WebSocket wire, written by hand: upgrade requests, client frames (valid and
invalid), and a parser for what the server sends. Independent of wsnet (it checks
wsnet), and pure: nothing here opens a socket.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: RFC 6455 §5.2 opcodes.
OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The example handshake of RFC 6455 §1.3.
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
#: base64 of bytes(range(16)): a well-formed key that is not the RFC's.
DEFAULT_KEY = "AAECAwQFBgcICQoLDA0ODw=="


def expected_accept(key: str) -> str:
    """RFC 6455 §4.2.2 step 5.4: base64(SHA-1(key + GUID)), computed independently."""
    digest = hashlib.sha1((key + WS_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


# ----------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------

HeaderValue = str | Sequence[str] | None


def _header_lines(name: str, value: HeaderValue) -> list[str]:
    """``None`` omits the header; a sequence repeats it once per value."""
    if value is None:
        return []
    if isinstance(value, str):
        return [f"{name}: {value}"]
    return [f"{name}: {v}" for v in value]


def upgrade_request(
    port: int | None = None,
    path: str = "/",
    *,
    method: str = "GET",
    http_version: str = "HTTP/1.1",
    host: HeaderValue = None,
    upgrade: HeaderValue = "websocket",
    connection: HeaderValue = "Upgrade",
    key: HeaderValue = DEFAULT_KEY,
    version: HeaderValue = "13",
    extensions: HeaderValue = None,
    extra_headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """A valid RFC 6455 §4.1 upgrade request; every part can be overridden.

    ``port`` names the server in Host (``127.0.0.1:port``); without it Host is
    ``example.com``; ``host`` overrides both (``[]`` leaves Host out). The other
    header arguments take a string, a list of strings (the header repeated) or
    None (header left out). Text is encoded as Latin-1 so that any byte value can
    be put into a header.
    """
    if host is None:
        host = f"127.0.0.1:{port}" if port is not None else "example.com"
    lines = [f"{method} {path} {http_version}"]
    lines += _header_lines("Host", host)
    lines += _header_lines("Upgrade", upgrade)
    lines += _header_lines("Connection", connection)
    lines += _header_lines("Sec-WebSocket-Key", key)
    lines += _header_lines("Sec-WebSocket-Version", version)
    lines += _header_lines("Sec-WebSocket-Extensions", extensions)
    lines += [f"{name}: {value}" for name, value in extra_headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_http_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (names lower-cased) of a response head without its
    blank line."""
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(status), headers


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo ``len(data) + 1``).

    Never returns an empty chunk (``b""`` means EOF to h11), and the chunks
    always join back to ``data``.
    """
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    return [c for c in chunks if c]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# ----------------------------------------------------------------------------
# Client frames, including invalid ones
# ----------------------------------------------------------------------------


def build_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    mask: bool = True,
    key: bytes | None = None,
) -> bytes:
    """Any frame, including ones the RFC forbids (for negative tests); masked
    with a random key unless ``key`` is given."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0)
    b0 |= (0x10 if rsv3 else 0) | (opcode & 0x0F)
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = key if key is not None else os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def raw_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    masked: bool = True,
    mask_key: bytes = b"\x37\xfa\x21\x3d",
) -> bytes:
    """A client frame with a fixed mask key, so sans-I/O runs repeat exactly."""
    return build_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=masked, key=mask_key)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    """The body of a close frame (RFC 6455 §5.5.1): the code, then the reason."""
    return struct.pack("!H", code) + reason


# ----------------------------------------------------------------------------
# Server frames
# ----------------------------------------------------------------------------


@dataclass
class Frame:
    fin: bool
    rsv1: bool
    rsv2: bool
    rsv3: bool
    opcode: int
    masked: bool
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == OP_CLOSE
        if len(self.payload) >= 2:
            return int(struct.unpack("!H", self.payload[:2])[0])
        return None


def parse_frame(buf: bytes | bytearray | memoryview) -> tuple[Frame, int] | None:
    """One frame from the start of ``buf`` and its length, or None if incomplete."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack("!H", buf[2:4])[0]
        pos = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack("!Q", buf[2:10])[0]
        pos = 10
    masked = bool(b1 & 0x80)
    key = b""
    if masked:
        if len(buf) < pos + 4:
            return None
        key = bytes(buf[pos : pos + 4])
        pos += 4
    if len(buf) < pos + n:
        return None
    payload = bytes(buf[pos : pos + n])
    if masked:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    frame = Frame(
        fin=bool(b0 & 0x80),
        rsv1=bool(b0 & 0x40),
        rsv2=bool(b0 & 0x20),
        rsv3=bool(b0 & 0x10),
        opcode=b0 & 0x0F,
        masked=masked,
        payload=payload,
    )
    return frame, pos + n


def parse_frames(data: bytes) -> tuple[list[Frame], bytes]:
    """Every complete frame in ``data``, and the incomplete rest."""
    frames: list[Frame] = []
    pos = 0
    while True:
        parsed = parse_frame(memoryview(data)[pos:])
        if parsed is None:
            return frames, data[pos:]
        frame, used = parsed
        frames.append(frame)
        pos += used


def inflate_message(payload: bytes) -> bytes:
    """permessage-deflate decode of one whole message (RFC 7692 §7.2.2)."""
    inflater = zlib.decompressobj(-15)
    return inflater.decompress(payload + b"\x00\x00\xff\xff") + inflater.flush()
