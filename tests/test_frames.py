"""Server frames made by ``encode_frame`` / ``Outgoing``, read back by wsproto's
client decoder (which also rejects non-minimal length encodings)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.peer import ClientPeer
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from wsnet._deflate import negotiate
from wsnet._frames import OP_BINARY, OP_TEXT, Outgoing, encode_frame

LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 100_000]


def header_size(n: int) -> int:
    """RFC 6455 §5.2: 7-bit, 7+16-bit or 7+64-bit payload length."""
    return 2 if n < 126 else 4 if n < 65536 else 10


def deflate_header(offer: str = "permessage-deflate") -> str:
    result = negotiate([offer])
    assert result is not None
    return result[1]


@pytest.mark.parametrize("n", LENGTHS)
def test_binary_frame_lengths(n: int) -> None:
    payload = bytes(i % 251 for i in range(n))
    frame = encode_frame(OP_BINARY, payload)
    assert len(frame) == header_size(n) + n
    assert frame[0] == 0x82  # FIN, no RSV, binary
    assert frame[1] & 0x80 == 0  # server frames are never masked
    events = ClientPeer().receive(frame)
    assert events == [BytesMessage(data=payload)]


@pytest.mark.parametrize("n", LENGTHS)
def test_text_frame_lengths(n: int) -> None:
    text = "abcdefghij" * (n // 10) + "x" * (n % 10)
    frame = encode_frame(OP_TEXT, text.encode())
    assert len(frame) == header_size(n) + n
    assert frame[0] == 0x81
    assert ClientPeer().receive(frame) == [TextMessage(data=text)]


def test_frames_can_follow_each_other() -> None:
    frames = b"".join(encode_frame(OP_TEXT, str(n).encode() * n) for n in (1, 200, 70000))
    assert ClientPeer().messages(frames) == ["1", "200" * 200, "70000" * 70000]


def test_rsv1_without_deflate_is_refused_by_the_client() -> None:
    """Sanity check of the decoder used here: RSV1 only means something with deflate."""
    events = ClientPeer().receive(encode_frame(OP_TEXT, b"x", rsv1=True))
    assert isinstance(events[0], CloseConnection) and events[0].code == 1002


def test_outgoing_kinds() -> None:
    text = Outgoing("h\xe9")
    assert text.opcode == OP_TEXT and text.payload == "h\xe9".encode() and len(text) == 3
    binary = Outgoing(b"\x00\x01")
    assert binary.opcode == OP_BINARY and binary.payload == b"\x00\x01"
    assert type(binary.payload) is bytes
    assert ClientPeer().messages(text.plain() + binary.plain()) == ["h\xe9", b"\x00\x01"]


def test_outgoing_encodes_once() -> None:
    message = Outgoing("same frame for everyone " * 20)
    plain = message.plain()
    assert message.plain() is plain
    deflated = message.deflated(15, 6)
    assert message.deflated(15, 6) is deflated
    other = message.deflated(10, 6)
    assert other is not deflated
    assert message.deflated(10, 6) is other
    assert deflated[0] & 0x40 and not plain[0] & 0x40


@pytest.mark.parametrize("bits", range(9, 16))
def test_outgoing_deflated_decodes_on_a_negotiated_client(bits: int) -> None:
    header = deflate_header(f"permessage-deflate; server_max_window_bits={bits}")
    # Long-range repeats: distances beyond a small window would break a client
    # inflating with that window, if the frame had been made with a larger one.
    text = "".join(f"{i:05d}|" for i in range(3000)) * 2
    message = Outgoing(text)
    frame = message.deflated(bits, 6)
    assert len(frame) < len(message.plain())
    peer = ClientPeer(header)
    # No context takeover: the very same bytes decode again and again.
    assert peer.messages(frame + frame + frame) == [text, text, text]


def test_deflated_15_6_on_the_browser_offer() -> None:
    peer = ClientPeer(deflate_header("permessage-deflate; client_max_window_bits"))
    message = Outgoing(b"\x00" * 10_000 + bytes(range(256)))
    frame = message.deflated(15, 6)
    assert peer.messages(frame) == [message.payload]
    # Plain and compressed frames mix freely on one deflate connection.
    assert peer.messages(message.plain() + frame + Outgoing("short").plain()) == [
        message.payload,
        message.payload,
        "short",
    ]


def test_empty_messages() -> None:
    peer = ClientPeer(deflate_header())
    wire = Outgoing("").plain() + Outgoing("").deflated(15, 6) + Outgoing(b"").deflated(15, 6)
    assert peer.messages(wire) == ["", "", b""]


@settings(max_examples=80, deadline=None)
@given(data=st.one_of(st.text(max_size=3000), st.binary(max_size=3000)), bits=st.integers(9, 15))
def test_any_payload_round_trips(data: str | bytes, bits: int) -> None:
    message = Outgoing(data)
    plain = message.plain()
    assert plain == encode_frame(message.opcode, message.payload)
    assert ClientPeer().messages(plain) == [data]
    header = deflate_header(f"permessage-deflate; server_max_window_bits={bits}")
    assert ClientPeer(header).messages(message.deflated(bits, 6) + plain) == [data, data]
