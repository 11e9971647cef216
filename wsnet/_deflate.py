"""permessage-deflate (RFC 7692): offer parsing, the server's choice, and a
bounded wsproto extension.

We negotiate ourselves instead of calling wsproto's
``server_extensions_handshake``: that echoes the last acceptable offer while
keeping state from earlier ones, raises ``ValueError`` on quoted values (legal per
RFC 7692 §7.1) and accepts unknown or repeated parameters (which §7.1 says to
decline). Here a doubtful offer is declined and the next one is considered.

The server always answers with ``server_no_context_takeover`` (§7.1.1.1 allows it
even unasked): every deflate peer then inflates each message on its own, so one
compressed frame can be appended to every outbox, and we keep no compressor
between messages. With ``client_no_context_takeover`` imposed too (the default),
no inflate state survives a message either.

wsproto has no size limits and inflates without bound, so a few KiB on the wire
can become gigabytes in one event. ``Deflate`` inflates with ``max_length`` and
answers 1009 as soon as a message's inflated size passes the limit.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

__all__ = ["DeflateParams", "Deflate", "parse_extensions", "negotiate", "compress", "wire_limit"]


def wire_limit(max_message_bytes: int) -> int:
    """The most bytes a message of ``max_message_bytes`` may take on the wire.

    Deflate never needs much more input than output (zlib's worst case is about
    0.03 % plus a few bytes), so a compressed frame may be a little larger than
    what it inflates to: this bound is the frame-length check of ``_session``
    and the compressed-input budget of ``Deflate``, one formula for both.
    """
    return max_message_bytes + max_message_bytes // 1024 + 1024


EXTENSION_NAME = "permessage-deflate"
_SYNC_TAIL = b"\x00\x00\xff\xff"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_OWS = re.compile(r"[ \t]*")
# RFC 7692 §7.1.2.1: 1*DIGIT, no leading zero, 8..15.
_WINDOW_BITS = re.compile(r"(?:[89]|1[0-5])")

Offer = tuple[str, list[tuple[str, str | None]]]


def parse_extensions(value: str) -> list[Offer] | None:
    """Parse a ``Sec-WebSocket-Extensions`` value (RFC 6455 §9.1 grammar).

    Returns ``[(name, [(param, value or None), ...]), ...]`` with names and
    parameter names lower-cased and quoted values unquoted, or None if the value
    does not follow the grammar.
    """
    offers: list[Offer] = []
    pos, end = 0, len(value)

    def skip_ows() -> None:
        nonlocal pos
        pos = _OWS.match(value, pos).end()  # type: ignore[union-attr]

    def token() -> str | None:
        nonlocal pos
        m = _TOKEN.match(value, pos)
        if m is None:
            return None
        pos = m.end()
        return m.group().lower()

    while True:
        skip_ows()
        if pos < end and value[pos] == ",":  # empty list elements are allowed
            pos += 1
            continue
        if pos >= end:
            return offers
        name = token()
        if name is None:
            return None
        params: list[tuple[str, str | None]] = []
        skip_ows()
        while pos < end and value[pos] == ";":
            pos += 1
            skip_ows()
            pname = token()
            if pname is None:
                return None
            skip_ows()
            pvalue: str | None = None
            if pos < end and value[pos] == "=":
                pos += 1
                skip_ows()
                m = _QUOTED.match(value, pos)
                if m is not None:
                    pos = m.end()
                    pvalue = re.sub(r"\\(.)", r"\1", m.group(1))
                else:
                    pvalue = token()
                    if pvalue is None:
                        return None
                skip_ows()
            params.append((pname, pvalue))
        offers.append((name, params))
        if pos < end:
            if value[pos] != ",":
                return None
            pos += 1


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """What was agreed with one peer; all deflate peers with equal
    ``server_window_bits`` can share one compressed frame."""

    server_window_bits: int = 15
    client_no_context_takeover: bool = True

    def response_header(self, echo_server_bits: bool) -> str:
        parts = [EXTENSION_NAME, "server_no_context_takeover"]
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if echo_server_bits:
            parts.append(f"server_max_window_bits={self.server_window_bits}")
        return "; ".join(parts)


def _accept_offer(
    params: list[tuple[str, str | None]], impose_client_no_context: bool,
) -> tuple[DeflateParams, bool] | None:
    seen: set[str] = set()
    server_bits: int | None = None
    client_no_context = impose_client_no_context
    for name, value in params:
        if name in seen:
            return None  # §7.1: a repeated parameter makes the offer invalid
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
            if name == "client_no_context_takeover":
                client_no_context = True
        elif name == "server_max_window_bits":
            if value is None or not _WINDOW_BITS.fullmatch(value):
                return None
            server_bits = int(value)
            if server_bits < 9:
                # zlib cannot produce raw deflate with an 8-bit window (it uses 9),
                # so we cannot honour this offer.
                return None
        elif name == "client_max_window_bits":
            # We may omit it in the answer (§7.1.2.2) and inflate with a 15-bit
            # window, which reads any smaller window too.
            if value is not None and not _WINDOW_BITS.fullmatch(value):
                return None
        else:
            return None  # unknown parameter: decline this offer
    params_out = DeflateParams(server_bits or 15, client_no_context)
    return params_out, server_bits is not None


def negotiate(
    header_values: list[str], impose_client_no_context: bool = True,
) -> tuple[DeflateParams, str] | None:
    """Pick the first acceptable permessage-deflate offer.

    Returns the agreed parameters and the ``Sec-WebSocket-Extensions`` response
    value, or None to decline (an unparsable header is declined, not refused: the
    connection then works uncompressed).
    """
    offers = parse_extensions(", ".join(header_values))
    if not offers:
        return None
    for name, params in offers:
        if name != EXTENSION_NAME:
            continue
        accepted = _accept_offer(params, impose_client_no_context)
        if accepted is not None:
            agreed, echo_bits = accepted
            return agreed, agreed.response_header(echo_bits)
    return None


def compress(payload: bytes, window_bits: int, level: int) -> bytes:
    """One message compressed with a fresh context, sync tail removed (§7.2.1)."""
    comp = zlib.compressobj(level, zlib.DEFLATED, -window_bits)
    data = comp.compress(payload) + comp.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(_SYNC_TAIL) else data


class Deflate(Extension):
    """The server side of permessage-deflate for one connection, inflate bounded.

    Outgoing data frames normally bypass wsproto (see ``_frames``); the outbound
    hook exists so that anything sent through wsproto is still correct.
    """

    name = EXTENSION_NAME

    def __init__(self, params: DeflateParams, max_message_bytes: int, level: int = 6) -> None:
        self.params = params
        self.max_message_bytes = max_message_bytes
        self.level = level
        self._inflater: zlib._Decompress | None = None
        self._compressed: bool | None = None  # None between messages
        self._room = 0  # inflated bytes the current message may still grow by
        self._wire_room = 0  # compressed bytes it may still take

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool | str:  # client side only; never used by a server
        return False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if rsv.rsv1 and (opcode.iscontrol() or opcode is Opcode.CONTINUATION):
            return CloseReason.PROTOCOL_ERROR  # §6.1: RSV1 only on a first frame
        if opcode.iscontrol():
            return RsvBits(True, False, False)
        if self._compressed is None:  # first frame of a message
            self._compressed = rsv.rsv1
            self._room = self.max_message_bytes
            # Empty stored blocks inflate to nothing: bound the input too.
            self._wire_room = wire_limit(self.max_message_bytes)
            if rsv.rsv1 and self._inflater is None:
                self._inflater = zlib.decompressobj(-15)
        else:
            # A client may sync-flush every fragment: a few bytes of framing each
            # (the fragment count itself is bounded by max_fragments).
            self._wire_room += 16
        return RsvBits(True, False, False)

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        assert self._inflater is not None
        self._wire_room -= len(data)
        if self._wire_room < 0:
            return CloseReason.MESSAGE_TOO_BIG
        try:
            out = self._inflater.decompress(data, self._room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if len(out) > self._room:
            return CloseReason.MESSAGE_TOO_BIG
        self._room -= len(out)
        return out

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes,
    ) -> bytes | CloseReason:
        if not self._compressed or proto.effective_opcode is None:  # type: ignore[union-attr]
            return data
        if proto.effective_opcode.iscontrol():  # type: ignore[union-attr]
            return data
        return self._inflate(data)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool,
    ) -> bytes | CloseReason | None:
        opcode = proto.effective_opcode  # type: ignore[union-attr]
        if not fin or opcode is None or opcode.iscontrol():
            return None
        compressed, self._compressed = self._compressed, None
        if not compressed:
            return None
        tail = self._inflate(_SYNC_TAIL)
        if self.params.client_no_context_takeover:
            self._inflater = None
        return tail

    def frame_outbound(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        data: bytes,
        fin: bool,
    ) -> tuple[RsvBits, bytes]:
        if opcode.iscontrol() or opcode is Opcode.CONTINUATION or not fin:
            # Only whole messages are compressed; fragments go out as they are.
            return rsv, data
        payload = compress(bytes(data), self.params.server_window_bits, self.level)
        return RsvBits(True, rsv.rsv2, rsv.rsv3), payload
