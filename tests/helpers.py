"""Shared helpers for the sans-I/O tests: request bytes, chunking, and a wsproto
client peer. Nothing here opens a socket.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate

from wsnet._deflate import DeflateParams
from wsnet._outbox import Outbox
from wsnet._session import Session

#: The example handshake of RFC 6455 §1.3.
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
#: base64 of bytes(range(16)): a well-formed key that is not the RFC's.
DEFAULT_KEY = "AAECAwQFBgcICQoLDA0ODw=="

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

HeaderValue = str | Sequence[str] | None


def _header_lines(name: str, value: HeaderValue) -> list[str]:
    """``None`` omits the header; a sequence repeats it once per value."""
    if value is None:
        return []
    if isinstance(value, str):
        return [f"{name}: {value}"]
    return [f"{name}: {v}" for v in value]


def upgrade_request(
    *,
    method: str = "GET",
    path: str = "/ws",
    http_version: str = "HTTP/1.1",
    host: HeaderValue = "example.com",
    upgrade: HeaderValue = "websocket",
    connection: HeaderValue = "Upgrade",
    key: HeaderValue = DEFAULT_KEY,
    version: HeaderValue = "13",
    extensions: HeaderValue = None,
    extra_headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """A valid RFC 6455 §4.1 upgrade request; every part can be overridden.

    Header arguments take a string, a list of strings (the header repeated) or
    None (header left out). Text is encoded as Latin-1 so that any byte value can
    be put into a header.
    """
    lines = [f"{method} {path} {http_version}"]
    lines += _header_lines("Host", host)
    lines += _header_lines("Upgrade", upgrade)
    lines += _header_lines("Connection", connection)
    lines += _header_lines("Sec-WebSocket-Key", key)
    lines += _header_lines("Sec-WebSocket-Version", version)
    lines += _header_lines("Sec-WebSocket-Extensions", extensions)
    lines += [f"{name}: {value}" for name, value in extra_headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


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
# Client frames, valid (through wsproto) and invalid (by hand)
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
    """Any frame, including ones the RFC forbids (for negative tests)."""
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


def client_deflate(response_header: str) -> PerMessageDeflate:
    """A client-side wsproto PerMessageDeflate configured by the server's
    ``Sec-WebSocket-Extensions`` answer, as wsproto's own handshake would."""
    ext = PerMessageDeflate()
    ext.finalize(response_header)
    assert ext.enabled()
    return ext


class ClientPeer:
    """A wsproto CLIENT connection: encodes masked client frames and decodes
    the server's bytes into wsproto events."""

    def __init__(self, deflate_response: str | None = None) -> None:
        extensions: list[Extension] = []
        if deflate_response is not None:
            extensions.append(client_deflate(deflate_response))
        self.conn = Connection(ConnectionType.CLIENT, extensions=extensions)

    @property
    def state(self) -> ConnectionState:
        return self.conn.state

    def text(self, data: str, *, fin: bool = True) -> bytes:
        return self.conn.send(TextMessage(data=data, message_finished=fin))

    def binary(self, data: bytes, *, fin: bool = True) -> bytes:
        return self.conn.send(BytesMessage(data=data, message_finished=fin))

    def ping(self, payload: bytes = b"") -> bytes:
        return self.conn.send(Ping(payload=payload))

    def pong(self, payload: bytes = b"") -> bytes:
        return self.conn.send(Pong(payload=payload))

    def close(self, code: int | None = 1000, reason: str | None = None) -> bytes:
        return self.conn.send(CloseConnection(code=code, reason=reason))  # type: ignore[arg-type]

    def receive(self, data: bytes) -> list[Event]:
        """Decode server bytes into events, with partial messages joined."""
        self.conn.receive_data(data)
        return join_messages(self.conn.events())

    def messages(self, data: bytes) -> list[str | bytes]:
        out: list[str | bytes] = []
        for event in self.receive(data):
            if isinstance(event, TextMessage):
                out.append(event.data)
            elif isinstance(event, BytesMessage):
                out.append(bytes(event.data))
        return out


def join_messages(events: Iterable[Event]) -> list[Event]:
    """wsproto streams messages in chunks; join them into one event each."""
    out: list[Event] = []
    pending: list[TextMessage | BytesMessage] = []
    for event in events:
        if isinstance(event, TextMessage | BytesMessage):
            pending.append(event)
            if event.message_finished:
                if isinstance(event, TextMessage):
                    text = "".join(p.data for p in pending if isinstance(p, TextMessage))
                    out.append(TextMessage(data=text))
                else:
                    raw = b"".join(bytes(p.data) for p in pending if isinstance(p, BytesMessage))
                    out.append(BytesMessage(data=raw))
                pending = []
        else:
            out.append(event)
    assert not pending, "server output ended inside a message"
    return out


# ----------------------------------------------------------------------------
# Driving a Session
# ----------------------------------------------------------------------------


def drain(outbox: Outbox) -> bytes:
    """Take everything queued in an outbox, as the reactor's send would."""
    data = b"".join(bytes(chunk) for chunk in outbox.chunks)
    outbox.consume(outbox.nbytes)
    return data


@dataclass
class SessionRun:
    """What a Session did with some input: everything a test compares."""

    messages: list[str | bytes] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    is_open: bool = True
    closing_done: bool = False
    parser_dead: bool = False
    output: bytes = b""


def new_session(
    max_message_bytes: int = 1 << 20, deflate: DeflateParams | None = None,
) -> Session:
    return Session(Outbox(), max_message_bytes=max_message_bytes, deflate=deflate)


def feed_session(
    chunks: Iterable[bytes | None],
    *,
    session: Session | None = None,
    max_message_bytes: int = 1 << 20,
    deflate: DeflateParams | None = None,
) -> SessionRun:
    """Feed chunks (``None`` = EOF) to a (new) Session and record the outcome."""
    if session is None:
        session = new_session(max_message_bytes, deflate)
    messages: list[str | bytes] = []
    for chunk in chunks:
        messages.extend(session.receive(chunk))
    return SessionRun(
        messages=messages,
        close_code=session.close_code,
        close_reason=session.close_reason,
        is_open=session.is_open,
        closing_done=session.closing_done,
        parser_dead=session.parser_dead,
        output=drain(session.out),
    )


def close_code_of(server_output: bytes) -> int | None:
    """The code of the close frame a fresh client finds in the server's bytes
    (None if there is no close frame)."""
    events = ClientPeer().receive(server_output)
    codes = [int(e.code) for e in events if isinstance(e, CloseConnection)]
    assert len(codes) <= 1, events
    return codes[0] if codes else None
