"""One WebSocket connection after the upgrade, without sockets.

Bytes go in through ``receive``; whole messages come out; every byte to send
(pongs, close frames, data) is appended to ``out``, the connection's outbox, for
the reactor to write. wsproto parses frames; this class adds what wsproto leaves
to its user (ARCHITECTURE.md, "wsproto and h11 facts"): answering pings and
closes, a bound on message size, and turning a parser failure into the close
frame the RFC asks for.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import IntEnum

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from wsnet._deflate import Deflate, DeflateParams, wire_limit
from wsnet._frames import Outgoing
from wsnet._outbox import Outbox

__all__ = ["Session", "CloseCode"]


class CloseCode(IntEnum):
    """Close codes of RFC 6455 §7.4.1 (and 1012-1015 from the IANA registry).

    Ours, not wsproto's ``CloseReason``: the values are the same, but the public
    API does not change when the parser does. Any int in 1000-4999 a peer may
    send is still passed to ``on_close`` as a plain int.
    """

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_FRAME_PAYLOAD_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXT = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    TLS_HANDSHAKE_FAILED = 1015

#: A client's pong frame: FIN + opcode 0xA, then MASK + a payload of at most 125.
_PONG_FIN = 0x80 | Opcode.PONG
_MAX_PONG_FRAME = 2 + 4 + 125


def _at_frame_boundary(ws: Connection) -> bool:
    """wsproto's parser holds no byte of an unfinished frame (so new bytes start
    a frame). It reads wsproto internals: if they change, this answers False and
    every byte goes through wsproto as before (tests/test_session.py notices)."""
    decoder = getattr(getattr(ws, "_proto", None), "_frame_decoder", None)
    buffer = getattr(decoder, "buffer", None)
    return buffer is not None and getattr(decoder, "header", 0) is None and not len(buffer)


_OPEN = ConnectionState.OPEN
_LOCAL_CLOSING = ConnectionState.LOCAL_CLOSING
_CLOSED = ConnectionState.CLOSED


class _FrameLimit(Extension):
    """Refuse a data frame whose declared length alone is over the limit (1009),
    before any of its payload is read. Stateless, so one instance serves every
    connection with the same limit."""

    name = "wsnet-frame-limit"
    _NO_RSV = RsvBits(False, False, False)

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool | str:
        return False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if payload_length > self.limit and not opcode.iscontrol():
            return CloseReason.MESSAGE_TOO_BIG
        return self._NO_RSV


_frame_limits: dict[int, _FrameLimit] = {}


def _frame_limit(max_message_bytes: int) -> _FrameLimit:
    limit = wire_limit(max_message_bytes)
    ext = _frame_limits.get(limit)
    if ext is None:
        ext = _frame_limits[limit] = _FrameLimit(limit)
    return ext


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


class Session:
    """The WebSocket half of a connection: wsproto plus limits and replies."""

    __slots__ = (
        "_ws",
        "_deflate",
        "_level",
        "_min_deflate",
        "_max_message",
        "_parts",
        "_size",
        "_frames",
        "_max_frames",
        "out",
        "close_code",
        "close_reason",
        "parser_dead",
        "pong_seen",
    )

    def __init__(
        self,
        outbox: Outbox,
        *,
        max_message_bytes: int,
        max_fragments: int = 4096,
        deflate: DeflateParams | None = None,
        deflate_level: int = 6,
        deflate_min_bytes: int = 128,
    ) -> None:
        extensions: list[Extension] = [_frame_limit(max_message_bytes)]
        if deflate:
            extensions.append(Deflate(deflate, max_message_bytes, deflate_level))
        self._ws = Connection(ConnectionType.SERVER, extensions=extensions)
        self._deflate = deflate
        self._level = deflate_level
        self._min_deflate = deflate_min_bytes
        self._max_message = max_message_bytes
        self._parts: list[str] | list[bytes] | None = None
        self._size = 0
        self._frames = 0
        self._max_frames = max_fragments
        #: Where our bytes go: the connection's outbox, shared with the reactor.
        self.out = outbox
        #: Set once, when the session stops being open: the code the peer sent,
        #: the code we sent, or 1006 when the transport went away without one.
        self.close_code: int | None = None
        self.close_reason = ""
        #: After a protocol error the parser reads nothing more: do not wait for
        #: the peer's close frame, just drain and shut the socket.
        self.parser_dead = False
        self.pong_seen = False

    # -- state ---------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._ws.state is _OPEN

    @property
    def closing_done(self) -> bool:
        """Nothing more to read: the close handshake ended, or cannot."""
        state = self._ws.state
        return state is _CLOSED or (self.parser_dead and state is not _OPEN)

    @property
    def deflate(self) -> DeflateParams | None:
        return self._deflate

    # -- output --------------------------------------------------------------

    def _push(self, data: bytes) -> None:
        self.out.append(data)

    def frame_for(self, message: Outgoing) -> bytes:
        """The encoding of a message this peer can read, shared where possible."""
        params = self._deflate
        if params is not None and len(message) >= self._min_deflate:
            return message.deflated(params.server_window_bits, self._level)
        return message.plain()

    def send(self, message: Outgoing) -> bool:
        """Queue a message; False (nothing queued) unless the session is open."""
        if self._ws.state is not _OPEN:
            return False
        self._push(self.frame_for(message))
        return True

    def ping(self, payload: bytes = b"") -> None:
        if self._ws.state is _OPEN:
            self.pong_seen = False
            self._push(self._ws.send(Ping(payload=payload)))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (no-op unless open)."""
        if self._ws.state is not _OPEN:
            return
        self._push(self._ws.send(CloseConnection(code=code, reason=reason)))
        self._finish(code, reason)

    def _finish(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = int(code)
            self.close_reason = reason

    # -- input ---------------------------------------------------------------

    def receive(self, data: bytes | None) -> list[str | bytes]:
        """Feed bytes from the peer (None at EOF); return the messages completed.

        Never raises on remote input: every violation ends in a close frame with
        the RFC's code, recorded in ``close_code``.
        """
        return list(self.feed(data))

    def feed(self, data: bytes | None) -> Iterator[str | bytes]:
        """Like ``receive``, but yields each message before looking at the frames
        behind it, so that replies to it are queued before a close frame caused
        by later garbage (the order Autobahn's strict cases check). Exhaust it.
        """
        ws = self._ws
        state = ws.state
        if state is _CLOSED or self.parser_dead:
            return
        if data is None:
            ws.receive_data(None)
            self._finish(CloseCode.ABNORMAL_CLOSURE, "")
            return
        if (6 <= len(data) <= _MAX_PONG_FRAME and data[0] == _PONG_FIN
                and data[1] == 0x80 | (len(data) - 6) and _at_frame_boundary(ws)):
            # Exactly one whole masked pong, and wsproto holds no partial frame:
            # nothing to parse. Idle connections' pongs are most of what an
            # idle server reads (wsproto's Python unmasking showed as most of
            # the keepalive cost in a profile of 15,000 idle clients).
            self.pong_seen = True
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                done = self._reassemble(event)
                if done is not None:
                    yield done
                elif self.parser_dead:
                    break  # the message was too big: nothing more is read
            elif isinstance(event, Ping):
                if ws.state is _OPEN:
                    self._push(ws.send(event.response()))
            elif isinstance(event, Pong):
                self.pong_seen = True
            elif isinstance(event, CloseConnection):
                self._on_close(event)
                break

    def _on_close(self, event: CloseConnection) -> None:
        ws = self._ws
        state = ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            # The peer started the handshake: echo its code (RFC 6455 §5.5.1).
            self._push(ws.send(event.response()))
            self._finish(event.code, event.reason or "")
        elif state is _OPEN:
            # wsproto found a protocol violation; its parser is now dead and it
            # leaves the state OPEN. Fail the connection (§7.1.7).
            self.fail(event.code, _public_reason(event.code))
        elif state is _LOCAL_CLOSING:
            self.parser_dead = True  # garbage after our close: stop reading
        # CLOSED: the answer to our close frame; close_code is already set.

    def fail(self, code: int, reason: str = "") -> None:
        """Close with ``code`` and stop reading: _Fail the WebSocket Connection_."""
        self.parser_dead = True
        self._parts = None
        self.close(code, reason)

    def _reassemble(self, event: TextMessage | BytesMessage) -> str | bytes | None:
        if self._ws.state is not _OPEN:
            return None  # data after a close frame is discarded
        chunk = event.data
        size = self._size + (_utf8_len(chunk) if isinstance(chunk, str) else len(chunk))
        if size > self._max_message:
            self.fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return None
        if event.frame_finished:
            self._frames += 1
            if self._frames > self._max_frames:
                self.fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
                return None
        parts = self._parts
        if event.message_finished:
            self._parts = None
            self._size = 0
            self._frames = 0
            if not parts:
                return chunk if isinstance(chunk, str) else bytes(chunk)
            parts.append(chunk)  # type: ignore[arg-type]
            return "".join(parts) if isinstance(chunk, str) else b"".join(parts)  # type: ignore[arg-type]
        if not chunk:
            return None  # an empty piece (e.g. inflated from nothing) adds nothing
        if parts is None:
            self._parts = parts = []
        parts.append(chunk)  # type: ignore[arg-type]
        self._size = size
        return None


_REASONS: dict[int, str] = {
    CloseCode.PROTOCOL_ERROR: "protocol error",
    CloseCode.INVALID_FRAME_PAYLOAD_DATA: "invalid payload data",
    CloseCode.MESSAGE_TOO_BIG: "message too big",
    CloseCode.POLICY_VIOLATION: "policy violation",
}


def _public_reason(code: int) -> str:
    """A reason phrase for the wire: wsproto's own texts may echo peer input."""
    return _REASONS.get(int(code), "")
