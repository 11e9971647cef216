"""permessage-deflate (RFC 7692): offer parsing, the server's choice, and the
bounded inflate of ``Deflate`` driven through a Session by a wsproto client."""

from __future__ import annotations

import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.peer import ClientPeer, close_code_of, drain, feed_session, new_session
from support.wire import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, byte_by_byte, raw_frame, split_at
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    enable_client_permessage_deflate,
)
from websockets.headers import build_extension, parse_extension
from wsproto.events import CloseConnection, TextMessage

from wsnet._deflate import DeflateParams, compress, negotiate, parse_extensions
from wsnet._frames import Outgoing

MiB = 1 << 20

# ----------------------------------------------------------------------------
# parse_extensions
# ----------------------------------------------------------------------------

PARSES: list[tuple[str, list[tuple[str, list[tuple[str, str | None]]]] | None]] = [
    ("", []),
    ("permessage-deflate", [("permessage-deflate", [])]),
    ("Permessage-Deflate", [("permessage-deflate", [])]),
    (
        "permessage-deflate; client_max_window_bits",
        [("permessage-deflate", [("client_max_window_bits", None)])],
    ),
    (
        "permessage-deflate ;\tClient_Max_Window_Bits = 10 ",
        [("permessage-deflate", [("client_max_window_bits", "10")])],
    ),
    (
        'permessage-deflate; client_max_window_bits="10"',
        [("permessage-deflate", [("client_max_window_bits", "10")])],
    ),
    ('foo; a="x,y;z", bar', [("foo", [("a", "x,y;z")]), ("bar", [])]),
    ('foo; a="1\\0"', [("foo", [("a", "10")])]),
    (
        "a; x=1; y, b, , c",
        [("a", [("x", "1"), ("y", None)]), ("b", []), ("c", [])],
    ),
    (", permessage-deflate,", [("permessage-deflate", [])]),
    ("permessage-deflate;", None),
    ("permessage-deflate; =10", None),
    ("permessage-deflate; a=", None),
    ('permessage-deflate; a="open', None),
    ("permessage-deflate; a=b c", None),
    ("permessage-deflate x", None),
    ("permessage-d\xe9flate", None),
    ("@", None),
]


@pytest.mark.parametrize(("value", "expected"), PARSES, ids=[repr(v) for v, _ in PARSES])
def test_parse_extensions(
    value: str, expected: list[tuple[str, list[tuple[str, str | None]]]] | None,
) -> None:
    assert parse_extensions(value) == expected


# ----------------------------------------------------------------------------
# negotiate
# ----------------------------------------------------------------------------


def response_params(header: str) -> dict[str, str | None]:
    """The response header parsed by the websockets library (not by wsnet)."""
    parsed = parse_extension(header)
    assert len(parsed) == 1, parsed
    name, params = parsed[0]
    assert name == "permessage-deflate"
    as_dict = dict(params)
    assert len(as_dict) == len(params), f"repeated parameter in {header!r}"
    return as_dict


SNCT = "server_no_context_takeover"
CNCT = "client_no_context_takeover"

# offer -> parameters of the answer (None: the extension is declined)
BOTH: dict[str, str | None] = {SNCT: None, CNCT: None}
CMWB = "client_max_window_bits"

OFFERS: list[tuple[str, list[str], dict[str, str | None] | None]] = [
    ("chrome/firefox", ["permessage-deflate; client_max_window_bits"], BOTH),
    ("bare", ["permessage-deflate"], BOTH),
    ("quoted client bits", ['permessage-deflate; client_max_window_bits="10"'], BOTH),
    ("client bits 8", ["permessage-deflate; client_max_window_bits=8"], BOTH),
    (
        "server bits",
        ["permessage-deflate; server_max_window_bits=10"],
        {SNCT: None, CNCT: None, "server_max_window_bits": "10"},
    ),
    (
        "quoted server bits",
        ['permessage-deflate; server_max_window_bits="12"'],
        {SNCT: None, CNCT: None, "server_max_window_bits": "12"},
    ),
    (
        "server bits 9",
        ["permessage-deflate; server_max_window_bits=9"],
        {SNCT: None, CNCT: None, "server_max_window_bits": "9"},
    ),
    (
        "everything",
        [f"permessage-deflate; {SNCT}; {CNCT}; server_max_window_bits=15; {CMWB}=15"],
        {SNCT: None, CNCT: None, "server_max_window_bits": "15"},
    ),
    ("other extension first", ["x-webkit-deflate-frame, permessage-deflate"], BOTH),
    ("two header lines", ["x-foo", "permessage-deflate"], BOTH),
    ("server bits abc", ["permessage-deflate; server_max_window_bits=abc"], None),
    ("server bits 08", ["permessage-deflate; server_max_window_bits=08"], None),
    ("server bits 16", ["permessage-deflate; server_max_window_bits=16"], None),
    ("server bits 8", ["permessage-deflate; server_max_window_bits=8"], None),
    ("server bits no value", ["permessage-deflate; server_max_window_bits"], None),
    ("client bits 7", ["permessage-deflate; client_max_window_bits=7"], None),
    ("client bits 16", ["permessage-deflate; client_max_window_bits=16"], None),
    ("client bits 010", ["permessage-deflate; client_max_window_bits=010"], None),
    ("unknown param", ["permessage-deflate; foo"], None),
    ("unknown param with value", ["permessage-deflate; foo=1"], None),
    ("flag with value", [f"permessage-deflate; {SNCT}=1"], None),
    ("repeated flag", [f"permessage-deflate; {CNCT}; {CNCT}"], None),
    (
        "repeated bits",
        ["permessage-deflate; server_max_window_bits=10; server_max_window_bits=10"],
        None,
    ),
    ("unparsable", ["permessage-deflate;"], None),
    ("other extension only", ["x-webkit-deflate-frame"], None),
    ("empty", [""], None),
    ("no header", [], None),
    (
        "bad then bare",
        ["permessage-deflate; server_max_window_bits=abc, permessage-deflate"],
        BOTH,
    ),
    (
        "repeated then 12",
        [
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10, "
            "permessage-deflate; server_max_window_bits=12",
        ],
        {SNCT: None, CNCT: None, "server_max_window_bits": "12"},
    ),
    (
        "unknown then 11, then 13",
        [
            "permessage-deflate; foo, permessage-deflate; server_max_window_bits=11, "
            "permessage-deflate; server_max_window_bits=13",
        ],
        {SNCT: None, CNCT: None, "server_max_window_bits": "11"},
    ),
    (
        "bad offer on its own header line",
        ["permessage-deflate; server_max_window_bits=16", "permessage-deflate"],
        BOTH,
    ),
]


@pytest.mark.parametrize(
    ("offers", "expected"), [c[1:] for c in OFFERS], ids=[c[0] for c in OFFERS],
)
def test_negotiate(offers: list[str], expected: dict[str, str | None] | None) -> None:
    result = negotiate(offers)
    if expected is None:
        assert result is None
        return
    assert result is not None
    params, header = result
    assert response_params(header) == expected
    bits = expected.get("server_max_window_bits")
    assert params.server_window_bits == (int(bits) if bits else 15)
    assert params.client_no_context_takeover


def test_negotiate_without_imposing_client_no_context_takeover() -> None:
    result = negotiate(["permessage-deflate; client_max_window_bits"], False)
    assert result is not None
    params, header = result
    assert response_params(header) == {SNCT: None}
    assert not params.client_no_context_takeover
    # ... unless the client asks for it.
    result = negotiate([f"permessage-deflate; {CNCT}"], False)
    assert result is not None
    assert response_params(result[1]) == {SNCT: None, CNCT: None}
    assert result[0].client_no_context_takeover


def websockets_offer(factory: ClientPerMessageDeflateFactory) -> str:
    return build_extension([(factory.name, factory.get_request_params())])


WEBSOCKETS_FACTORIES = {
    "default": lambda: enable_client_permessage_deflate(None)[0],
    "no params": lambda: ClientPerMessageDeflateFactory(client_max_window_bits=None),
    "small windows": lambda: ClientPerMessageDeflateFactory(
        server_max_window_bits=10, client_max_window_bits=10,
    ),
    "no context takeover": lambda: ClientPerMessageDeflateFactory(
        server_no_context_takeover=True, client_no_context_takeover=True,
    ),
}


@pytest.mark.parametrize("make", WEBSOCKETS_FACTORIES.values(), ids=WEBSOCKETS_FACTORIES.keys())
def test_websockets_client_offer_and_answer(make: object) -> None:
    """The websockets library's client makes the offer and judges our answer."""
    factory = make()  # type: ignore[operator]
    assert isinstance(factory, ClientPerMessageDeflateFactory)
    offer = websockets_offer(factory)
    result = negotiate([offer])
    assert result is not None, offer
    params, header = result
    extension = factory.process_response_params(parse_extension(header)[0][1], [])
    # websockets' names are from the client's side: "remote" is the server.
    assert extension.remote_no_context_takeover
    assert extension.local_no_context_takeover
    assert extension.remote_max_window_bits == params.server_window_bits
    requested = dict(factory.get_request_params()).get("server_max_window_bits")
    assert params.server_window_bits == (int(requested) if requested else 15)


def test_response_header_always_imposes_server_no_context_takeover() -> None:
    for bits in range(9, 16):
        for client_nct in (False, True):
            for echo in (False, True):
                header = DeflateParams(bits, client_nct).response_header(echo)
                params = response_params(header)
                assert SNCT in params
                assert (CNCT in params) is client_nct
                assert params.get("server_max_window_bits") == (str(bits) if echo else None)


# ----------------------------------------------------------------------------
# compress
# ----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(payload=st.binary(max_size=5000), bits=st.integers(9, 15), level=st.integers(1, 9))
def test_compress_is_raw_deflate_without_sync_tail(payload: bytes, bits: int, level: int) -> None:
    body = compress(payload, bits, level)
    assert not body.endswith(b"\x00\x00\xff\xff")
    inflater = zlib.decompressobj(-bits)
    assert inflater.decompress(body + b"\x00\x00\xff\xff") == payload


# ----------------------------------------------------------------------------
# Deflate inside a Session, against a wsproto client
# ----------------------------------------------------------------------------

CLIENT_OFFERS = [
    "permessage-deflate; client_max_window_bits",
    "permessage-deflate",
    "permessage-deflate; server_max_window_bits=9",
    "permessage-deflate; server_max_window_bits=12; client_max_window_bits=10",
    f"permessage-deflate; {CNCT}; {SNCT}",
]


def agree(offer: str, impose: bool = True) -> tuple[DeflateParams, str]:
    result = negotiate([offer], impose)
    assert result is not None
    return result


MESSAGES: list[str | bytes] = [
    "hello",
    "",
    "h\xe9llo \u2713 \U0001f600 " * 40,
    b"\x00\xff" * 3000,
    "repeat me " * 500,
    "repeat me " * 500,
    bytes(range(256)) * 40,
]


@pytest.mark.parametrize("impose", [True, False], ids=["client-nct", "client-takeover"])
@pytest.mark.parametrize("offer", CLIENT_OFFERS)
def test_compressed_round_trip(offer: str, impose: bool) -> None:
    params, header = agree(offer, impose)
    peer = ClientPeer(header)
    session = new_session(MiB, params)
    wire = b""
    for message in MESSAGES:
        wire += peer.text(message) if isinstance(message, str) else peer.binary(message)
    assert wire[0] & 0x40, "the client did not compress"
    # The same stream, whole and byte by byte: inflate state carries over
    # between reads (and, with context takeover, between messages).
    assert feed_session([wire], session=session).messages == MESSAGES
    assert feed_session(byte_by_byte(wire), max_message_bytes=MiB, deflate=params).messages == (
        MESSAGES
    )
    # And back: the server's frames decode on the same client.
    for message in MESSAGES:
        assert session.send(Outgoing(message))
    assert peer.messages(drain(session.out)) == MESSAGES


def test_server_frames_are_compressed_from_min_bytes() -> None:
    params, header = agree("permessage-deflate")
    session = new_session(MiB, params)
    assert session.frame_for(Outgoing("x" * 127))[0] & 0x40 == 0
    long = session.frame_for(Outgoing("x" * 128))
    assert long[0] & 0x40
    assert ClientPeer(header).messages(long) == ["x" * 128]


def test_fragmented_compressed_message() -> None:
    params, header = agree("permessage-deflate")
    peer = ClientPeer(header)
    parts = ["first part " * 20, "second ", "third " * 50]
    wire = peer.text(parts[0], fin=False) + peer.ping(b"mid") + peer.text(parts[1], fin=False)
    wire += peer.text(parts[2])
    run = feed_session([wire], deflate=params)
    assert run.messages == ["".join(parts)]
    assert run.close_code is None
    events = ClientPeer().receive(run.output)
    assert [type(e).__name__ for e in events] == ["Pong"]


def test_uncompressed_message_on_a_deflate_connection() -> None:
    params, _header = agree("permessage-deflate")
    wire = raw_frame(OP_TEXT, b"plain") + raw_frame(OP_BINARY, b"\x01\x02")
    assert feed_session([wire], deflate=params).messages == ["plain", b"\x01\x02"]


def compressed(payload: bytes) -> bytes:
    return compress(payload, 15, 6)


BAD_DEFLATE: list[tuple[str, bytes, int]] = [
    ("invalid block type", raw_frame(OP_BINARY, b"\xff\xff\xff\xff", rsv1=True), 1007),
    ("invalid distance", raw_frame(OP_BINARY, b"\x63\x00\x0b\x00\x00", rsv1=True), 1007),
    (
        "inflates to bad UTF-8",
        raw_frame(OP_TEXT, compressed(b"ok \xff\xfe"), rsv1=True),
        1007,
    ),
    (
        "RSV1 on continuation",
        raw_frame(OP_TEXT, compressed(b"a"), fin=False, rsv1=True)
        + raw_frame(OP_CONT, compressed(b"b"), rsv1=True),
        1002,
    ),
    ("RSV1 on ping", raw_frame(OP_PING, b"", rsv1=True), 1002),
]


@pytest.mark.parametrize(
    ("wire", "code"), [c[1:] for c in BAD_DEFLATE], ids=[c[0] for c in BAD_DEFLATE],
)
def test_bad_compressed_input(wire: bytes, code: int) -> None:
    params, _header = agree("permessage-deflate")
    for chunks in ([wire], byte_by_byte(wire)):
        run = feed_session(chunks, deflate=params)
        assert run.messages == []
        assert run.close_code == code
        assert close_code_of(run.output) == code
        assert run.parser_dead and run.closing_done


@pytest.mark.parametrize("extra", [0, 1])
def test_inflated_size_limit_is_exact(extra: int) -> None:
    limit = 64 * 1024
    params, header = agree("permessage-deflate")
    payload = bytes(limit + extra)
    wire = ClientPeer(header).binary(payload)
    for chunks in ([wire], byte_by_byte(wire)):
        run = feed_session(chunks, max_message_bytes=limit, deflate=params)
        if extra:
            assert run.messages == []
            assert run.close_code == 1009
            assert close_code_of(run.output) == 1009
        else:
            assert run.messages == [payload]
            assert run.close_code is None


def test_compression_bomb_is_stopped_with_bounded_memory() -> None:
    params, header = agree("permessage-deflate; client_max_window_bits")
    peer = ClientPeer(header)
    bomb = bytes(50 * MiB)
    wire = peer.binary(bomb)
    del bomb
    assert len(wire) < MiB // 4  # a small wire message...
    session = new_session(MiB, params)
    tracemalloc.start()
    try:
        messages = session.receive(wire)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert messages == []
    assert session.close_code == 1009
    assert close_code_of(drain(session.out)) == 1009
    assert session.parser_dead and session.closing_done
    # ...that must not inflate much past the 1 MiB limit.
    assert peak < 4 * MiB, peak


def test_compression_bomb_in_fragments_and_small_reads() -> None:
    params, header = agree("permessage-deflate")
    peer = ClientPeer(header)
    wire = b"".join(peer.binary(bytes(256 * 1024), fin=False) for _ in range(40))
    wire += peer.binary(b"end")
    chunks = split_at(wire, range(0, len(wire), 1000))
    session = new_session(MiB, params)
    tracemalloc.start()
    try:
        run = feed_session(chunks, session=session)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert run.messages == []
    assert run.close_code == 1009
    assert close_code_of(run.output) == 1009
    assert peak < 4 * MiB, peak


def test_wsproto_client_decodes_compressed_close_and_pong() -> None:
    """Control frames are never compressed, on either side."""
    params, header = agree("permessage-deflate")
    peer = ClientPeer(header)
    session = new_session(MiB, params)
    session.receive(peer.ping(b"p" * 100))
    session.close(1000, "done")
    events = peer.receive(drain(session.out))
    assert [type(e).__name__ for e in events] == ["Pong", "CloseConnection"]
    close = events[1]
    assert isinstance(close, CloseConnection) and close.code == 1000


@settings(max_examples=40, deadline=None)
@given(
    text=st.text(max_size=400),
    cuts=st.lists(st.integers(0, 5000), max_size=10),
    fragments=st.integers(1, 4),
)
def test_compressed_split_points_do_not_matter(
    text: str, cuts: list[int], fragments: int,
) -> None:
    params, header = agree("permessage-deflate")
    peer = ClientPeer(header)
    step = max(1, len(text) // fragments)
    pieces = [text[i : i + step] for i in range(0, len(text), step)] or [""]
    wire = b"".join(peer.text(p, fin=False) for p in pieces[:-1]) + peer.text(pieces[-1])
    wire += peer.text(text)
    run = feed_session(split_at(wire, cuts), deflate=params)
    assert run.messages == [text, text]
    assert run.close_code is None
    assert isinstance(ClientPeer(header).receive(Outgoing(text).deflated(15, 6))[0], TextMessage)
