"""Server-to-client data frames, encoded once and shared.

Server frames are unmasked (RFC 6455 §5.1), so the same message encodes to the
same bytes for every plain connection, and, compressed without context
takeover, for every deflate connection with the same window. ``Outgoing`` holds
a message with both encodings made lazily, at most once each; fan-out appends the
very same ``bytes`` object to every recipient's outbox.

Only whole, unfragmented messages are built here. wsproto keeps the state of
fragmented sends, which we never start, so bypassing it between messages is safe.
"""

from __future__ import annotations

import struct

from wsnet._deflate import compress

__all__ = ["OP_TEXT", "OP_BINARY", "encode_frame", "Outgoing"]

OP_TEXT = 0x1
OP_BINARY = 0x2
_FIN = 0x80
_RSV1 = 0x40


def encode_frame(opcode: int, payload: bytes, rsv1: bool = False) -> bytes:
    """One final, unmasked frame (RFC 6455 §5.2)."""
    first = _FIN | (_RSV1 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, 126, n)
    else:
        head = struct.pack("!BBQ", first, 127, n)
    return head + payload


class Outgoing:
    """One message to send to one or many peers, encoded on demand."""

    __slots__ = ("opcode", "payload", "_plain", "_deflated")

    def __init__(self, data: str | bytes) -> None:
        if isinstance(data, str):
            self.opcode = OP_TEXT
            self.payload = data.encode()
        else:
            self.opcode = OP_BINARY
            self.payload = bytes(data)
        self._plain: bytes | None = None
        self._deflated: dict[tuple[int, int], bytes] | None = None

    def __len__(self) -> int:
        return len(self.payload)

    def plain(self) -> bytes:
        if self._plain is None:
            self._plain = encode_frame(self.opcode, self.payload)
        return self._plain

    def deflated(self, window_bits: int, level: int) -> bytes:
        """The frame compressed with a fresh context for this window size."""
        cache = self._deflated
        if cache is None:
            cache = self._deflated = {}
        frame = cache.get((window_bits, level))
        if frame is None:
            body = compress(self.payload, window_bits, level)
            frame = cache[window_bits, level] = encode_frame(self.opcode, body, rsv1=True)
        return frame
