"""The upgrade decision (RFC 6455 §4.2.1/§4.2.2) and the h11 request reader,
without sockets: request bytes in, exact status and headers out."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.peer import ClientPeer
from support.wire import (
    DEFAULT_KEY,
    RFC_ACCEPT,
    RFC_KEY,
    byte_by_byte,
    raw_frame,
    split_at,
    upgrade_request,
)
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, TextMessage
from wsproto.events import Request as WsRequest
from wsproto.extensions import PerMessageDeflate

from wsnet._http import Request, Response, render_response
from wsnet._upgrade import Accept, HttpReader, accept_token, decide_upgrade, is_upgrade

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def expected_accept(key: str) -> str:
    """RFC 6455 §4.2.2 step 5.4, computed here independently of wsnet."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def b64(n: int) -> str:
    return base64.b64encode(bytes(range(n))).decode()


# ----------------------------------------------------------------------------
# Feeding the reader
# ----------------------------------------------------------------------------


def read(
    chunks: Iterable[bytes], max_header_bytes: int = 16 * 1024,
) -> tuple[Request | Response | None, HttpReader, bytes]:
    """Feed chunks until the reader answers; return the answer, the reader and
    the bytes that were never fed (they follow the request on the wire)."""
    reader = HttpReader(max_header_bytes)
    chunk_list = list(chunks)
    for i, chunk in enumerate(chunk_list):
        result = reader.feed(chunk, ("192.0.2.1", 4242))
        if result is not None:
            return result, reader, b"".join(chunk_list[i + 1 :])
    return None, reader, b""


def parse(data: bytes) -> Request:
    result, _reader, rest = read([data])
    assert isinstance(result, Request), result
    assert rest == b""
    return result


@dataclass(frozen=True)
class Outcome:
    """Everything observable about one request, for comparing feeding patterns."""

    result: Request | Response | None
    decision: Accept | Response | None
    head: bytes | None
    after_request: bytes | None


def outcome(chunks: Iterable[bytes], max_header_bytes: int = 16 * 1024) -> Outcome:
    result, reader, rest = read(chunks, max_header_bytes)
    if not isinstance(result, Request):
        return Outcome(result, None, None, None)
    decision = decide_upgrade(result)
    if not isinstance(decision, Accept):
        return Outcome(result, decision, None, None)
    head, trailing = reader.switch(decision)
    return Outcome(result, decision, head, trailing + rest)


# ----------------------------------------------------------------------------
# The accept token
# ----------------------------------------------------------------------------


def test_accept_token_rfc_example() -> None:
    assert accept_token(RFC_KEY) == RFC_ACCEPT
    assert accept_token(RFC_KEY.encode()) == RFC_ACCEPT
    assert expected_accept(RFC_KEY) == RFC_ACCEPT


def test_rfc_example_request_is_accepted_with_the_rfc_token() -> None:
    decision = decide_upgrade(parse(upgrade_request(key=RFC_KEY, path="/")))
    assert isinstance(decision, Accept)
    assert decision.headers == (
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", RFC_ACCEPT),
    )
    assert decision.deflate is None


# ----------------------------------------------------------------------------
# The decision table
# ----------------------------------------------------------------------------

ACCEPT = 101
VERSION_13 = {"Sec-WebSocket-Version": "13"}

DECISIONS: list[tuple[str, bytes, dict[str, Any], int, dict[str, str]]] = [
    ("valid", upgrade_request(), {}, ACCEPT, {}),
    ("root path", upgrade_request(path="/"), {}, ACCEPT, {}),
    ("query string", upgrade_request(path="/ws?room=a&name=b"), {}, ACCEPT, {}),
    ("upgrade any case", upgrade_request(upgrade="WebSocket"), {}, ACCEPT, {}),
    ("upgrade list", upgrade_request(upgrade="foo, websocket"), {}, ACCEPT, {}),
    ("firefox connection", upgrade_request(connection="keep-alive, Upgrade"), {}, ACCEPT, {}),
    ("connection lower", upgrade_request(connection="upgrade"), {}, ACCEPT, {}),
    ("connection repeated", upgrade_request(connection=["keep-alive", "Upgrade"]), {}, ACCEPT, {}),
    ("content-length 0", upgrade_request(extra_headers=[("Content-Length", "0")]), {}, ACCEPT, {}),
    ("POST", upgrade_request(method="POST"), {}, 405, {"Allow": "GET"}),
    ("HEAD", upgrade_request(method="HEAD"), {}, 405, {"Allow": "GET"}),
    ("PUT", upgrade_request(method="PUT"), {}, 405, {"Allow": "GET"}),
    ("unknown path", upgrade_request(path="/chat"), {}, 404, {}),
    ("path with slash", upgrade_request(path="/ws/"), {}, 404, {}),
    ("HTTP/1.0", upgrade_request(http_version="HTTP/1.0"), {}, 400, {}),
    ("no Upgrade", upgrade_request(upgrade=None), {}, 400, {}),
    ("Upgrade h2c", upgrade_request(upgrade="h2c"), {}, 400, {}),
    ("Upgrade websocket2", upgrade_request(upgrade="websocket2"), {}, 400, {}),
    ("no Connection", upgrade_request(connection=None), {}, 400, {}),
    ("Connection keep-alive", upgrade_request(connection="keep-alive"), {}, 400, {}),
    ("Connection upgraded", upgrade_request(connection="upgraded"), {}, 400, {}),
    ("no version", upgrade_request(version=None), {}, 426, VERSION_13),
    ("version 8", upgrade_request(version="8"), {}, 426, VERSION_13),
    ("version 14", upgrade_request(version="14"), {}, 426, VERSION_13),
    ("no key", upgrade_request(key=None), {}, 400, {}),
    ("key twice", upgrade_request(key=[DEFAULT_KEY, DEFAULT_KEY]), {}, 400, {}),
    ("key two values", upgrade_request(key=[DEFAULT_KEY, RFC_KEY]), {}, 400, {}),
    ("key not base64", upgrade_request(key="!!!!!!!!!!!!!!!!!!!!!!=="), {}, 400, {}),
    ("key 15 bytes", upgrade_request(key=b64(15)), {}, 400, {}),
    ("key 17 bytes", upgrade_request(key=b64(17)), {}, 400, {}),
    ("key 18 bytes", upgrade_request(key=b64(18)), {}, 400, {}),
    ("key unpadded", upgrade_request(key=DEFAULT_KEY.rstrip("=")), {}, 400, {}),
    ("key empty", upgrade_request(key=""), {}, 400, {}),
    ("body", upgrade_request(extra_headers=[("Content-Length", "5")], body=b"hello"), {}, 400, {}),
    (
        "chunked body",
        upgrade_request(extra_headers=[("Transfer-Encoding", "chunked")], body=b"0\r\n\r\n"),
        {},
        400,
        {},
    ),
    ("at capacity", upgrade_request(), {"at_capacity": True}, 503, {"Retry-After": "5"}),
    # The first failed check decides: a client must fix its request before the
    # capacity matters.
    (
        "at capacity, bad version",
        upgrade_request(version="8"),
        {"at_capacity": True},
        426,
        VERSION_13,
    ),
    ("bad method and path", upgrade_request(method="POST", path="/x"), {}, 405, {"Allow": "GET"}),
    # Header values that are not ASCII decode as Latin-1 and never raise.
    ("non-ASCII extra header", upgrade_request(extra_headers=[("X-N", "caf\xe9")]), {}, ACCEPT, {}),
    ("non-ASCII host", upgrade_request(host="caf\xe9.example"), {}, ACCEPT, {}),
    ("non-ASCII key", upgrade_request(key="\xe9" * 24), {}, 400, {}),
    ("non-ASCII version", upgrade_request(version="1\xb3"), {}, 426, VERSION_13),
    ("non-ASCII upgrade", upgrade_request(upgrade="w\xebbsocket"), {}, 400, {}),
    ("non-ASCII connection", upgrade_request(connection="\xfcpgrade"), {}, 400, {}),
    ("non-ASCII extensions", upgrade_request(extensions="permessage-d\xe9flate"), {}, ACCEPT, {}),
]


@pytest.mark.parametrize(
    ("data", "kwargs", "status", "headers"),
    [case[1:] for case in DECISIONS],
    ids=[case[0] for case in DECISIONS],
)
def test_decide_upgrade(
    data: bytes, kwargs: dict[str, Any], status: int, headers: dict[str, str],
) -> None:
    request = parse(data)
    decision = decide_upgrade(request, **kwargs)
    if status == ACCEPT:
        assert isinstance(decision, Accept), decision
        assert decision.headers == (
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", expected_accept(request.header("sec-websocket-key") or "")),
        )
        assert decision.deflate is None
    else:
        assert isinstance(decision, Response), decision
        assert decision.status == status
        assert dict(decision.headers) == headers
        assert decision.body.endswith(b"\n") and len(decision.body) > 1
        # Every refusal renders to a complete HTTP/1.1 response a client can parse.
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        client.receive_data(render_response(decision))
        response = client.next_event()
        assert isinstance(response, h11.Response)
        assert response.status_code == status
        body = client.next_event()
        assert isinstance(body, h11.Data) and body.data == decision.body


def test_is_upgrade() -> None:
    assert is_upgrade(parse(upgrade_request()))
    assert not is_upgrade(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))


def test_custom_ws_paths() -> None:
    request = parse(upgrade_request(path="/live"))
    assert isinstance(decide_upgrade(request, ws_paths=("/live",)), Accept)
    refused = decide_upgrade(parse(upgrade_request(path="/ws")), ws_paths=("/live",))
    assert isinstance(refused, Response) and refused.status == 404


def test_deflate_offer_is_answered_only_when_enabled() -> None:
    request = parse(upgrade_request(extensions="permessage-deflate; client_max_window_bits"))
    on = decide_upgrade(request)
    assert isinstance(on, Accept) and on.deflate is not None
    assert dict(on.headers)["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
    off = decide_upgrade(request, deflate=False)
    assert isinstance(off, Accept) and off.deflate is None
    assert "Sec-WebSocket-Extensions" not in dict(off.headers)


# ----------------------------------------------------------------------------
# A real client handshake: wsproto's own client checks the 101
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("deflate", [False, True])
def test_wsproto_client_accepts_the_101_and_reads_the_first_frame(deflate: bool) -> None:
    client = WSConnection(ConnectionType.CLIENT)
    extensions = [PerMessageDeflate()] if deflate else []
    request_bytes = client.send(WsRequest(host="example.com", target="/ws", extensions=extensions))
    result, reader, rest = read([request_bytes])
    assert isinstance(result, Request) and rest == b""
    decision = decide_upgrade(result)
    assert isinstance(decision, Accept)
    assert (decision.deflate is not None) is deflate
    head, trailing = reader.switch(decision)
    assert trailing == b""
    frame = b"\x81\x02hi"  # an unmasked server text frame right behind the 101
    client.receive_data(head + frame)
    events = list(client.events())
    assert isinstance(events[0], AcceptConnection), events
    assert [type(e) for e in events[0].extensions] == ([PerMessageDeflate] if deflate else [])
    assert isinstance(events[1], TextMessage) and events[1].data == "hi"


def test_wsproto_client_reads_a_refusal() -> None:
    client = WSConnection(ConnectionType.CLIENT)
    request_bytes = client.send(WsRequest(host="example.com", target="/nowhere"))
    decision = decide_upgrade(parse(request_bytes))
    assert isinstance(decision, Response) and decision.status == 404
    client.receive_data(render_response(decision))
    events = list(client.events())
    assert isinstance(events[0], RejectConnection) and events[0].status_code == 404


# ----------------------------------------------------------------------------
# HttpReader
# ----------------------------------------------------------------------------

TLS_CLIENT_HELLO = bytes.fromhex(
    "16030100f8010000f40303" + "ab" * 32 + "20" + "cd" * 32 + "0008130213031301c02c0100",
)

BROKEN: list[tuple[str, bytes, int]] = [
    ("TLS ClientHello", TLS_CLIENT_HELLO, 400),
    ("NUL bytes", b"\x00\x00\x00\x00\r\n\r\n", 400),
    ("binary garbage", bytes(range(256)), 400),
    ("text garbage", b"hello world\r\n\r\n", 400),
    ("HTTP/0.9", b"GET /\r\n\r\n", 400),
    ("no Host", b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", 400),
    ("bad header line", b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    ("non-ASCII path", upgrade_request(path="/caf\xe9"), 400),
    ("non-ASCII query", upgrade_request(path="/ws?name=\xe9"), 400),
    ("non-ASCII header name", upgrade_request(extra_headers=[("X-\xe9", "1")]), 400),
]


@pytest.mark.parametrize(("data", "status"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_reader_refuses_malformed_input(data: bytes, status: int) -> None:
    for chunks in ([data], byte_by_byte(data)):
        result, reader, _rest = read(chunks)
        assert isinstance(result, Response), result
        assert result.status == status
        assert reader.request is None


def test_reader_eof_before_request_is_quiet() -> None:
    reader = HttpReader(1024)
    assert reader.feed(b"") is None
    assert reader.closed


def test_reader_eof_inside_request_is_400() -> None:
    reader = HttpReader(1024)
    assert reader.feed(b"GET /ws HT") is None
    assert not reader.closed
    result = reader.feed(b"")
    assert isinstance(result, Response) and result.status == 400


def test_reader_keeps_request_fields() -> None:
    data = upgrade_request(path="/ws?room=r1&name=ann", extra_headers=[("X-Name", "caf\xe9")])
    request = parse(data)
    assert request.method == "GET"
    assert request.target == "/ws?room=r1&name=ann"
    assert request.path == "/ws"
    assert request.query == {"room": "r1", "name": "ann"}
    assert request.http_version == "1.1"
    assert request.peer == ("192.0.2.1", 4242)
    assert request.header("x-name") == "caf\xe9"
    assert request.header("Sec-WebSocket-Key") == DEFAULT_KEY


def big_request(size: int) -> bytes:
    return upgrade_request(extra_headers=[("Cookie", "c" * size)])


def test_oversized_headers_431_fed_in_pieces() -> None:
    data = big_request(4000)
    for chunks in (byte_by_byte(data), split_at(data, range(0, len(data), 100))):
        result, _reader, _rest = read(chunks, max_header_bytes=1024)
        assert isinstance(result, Response) and result.status == 431


def test_oversized_headers_431_fed_whole() -> None:
    result, _reader, _rest = read([big_request(4000)], max_header_bytes=1024)
    assert isinstance(result, Response) and result.status == 431


def test_headers_under_the_limit_pass_in_any_chunking() -> None:
    data = big_request(500)
    assert len(data) < 1024
    for chunks in ([data], byte_by_byte(data)):
        result, _reader, _rest = read(chunks, max_header_bytes=1024)
        assert isinstance(result, Request)


def test_switch_returns_101_and_the_bytes_behind_the_request() -> None:
    peer = ClientPeer()
    frames = peer.text("first") + peer.binary(b"second")
    result, reader, rest = read([upgrade_request(key=RFC_KEY) + frames])
    assert isinstance(result, Request) and rest == b""
    decision = decide_upgrade(result)
    assert isinstance(decision, Accept)
    head, trailing = reader.switch(decision)
    assert trailing == frames
    # The 101 as an h11 client sees it.
    client = h11.Connection(h11.CLIENT)
    client.send(
        h11.Request(
            method="GET",
            target="/ws",
            headers=[("Host", "example.com"), ("Upgrade", "websocket"), ("Connection", "Upgrade")],
        ),
    )
    client.send(h11.EndOfMessage())
    client.receive_data(head)
    response = client.next_event()
    assert isinstance(response, h11.InformationalResponse)
    assert response.status_code == 101
    headers = {k.decode(): v.decode() for k, v in response.headers}
    assert headers == {
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-accept": RFC_ACCEPT,
    }
    assert client.our_state is h11.SWITCHED_PROTOCOL


# ----------------------------------------------------------------------------
# Feeding patterns give identical results
# ----------------------------------------------------------------------------

EAGER_FRAMES = raw_frame(0x1, b"eager") + raw_frame(0x9, b"ping") + raw_frame(0x2, bytes(300))

SPLIT_CASES: list[tuple[str, bytes]] = [
    ("valid + frames", upgrade_request() + EAGER_FRAMES),
    ("deflate offers", upgrade_request(extensions="permessage-deflate; x=1, permessage-deflate")),
    (
        "content-length 0 + frames",
        upgrade_request(extra_headers=[("Content-Length", "0")]) + EAGER_FRAMES,
    ),
    ("valid + pipelined junk", upgrade_request() + b"GET / HTTP/1.1\r\n\r\n"),
    ("bad version", upgrade_request(version="8")),
    ("POST", upgrade_request(method="POST")),
    ("body", upgrade_request(extra_headers=[("Content-Length", "3")], body=b"abc")),
    ("non-ASCII", upgrade_request(extra_headers=[("X-A", "\xff\xfe")]) + EAGER_FRAMES),
    ("TLS", TLS_CLIENT_HELLO),
    ("garbage", b"hello world\r\n\r\n"),
]


@pytest.mark.parametrize("data", [c[1] for c in SPLIT_CASES], ids=[c[0] for c in SPLIT_CASES])
def test_byte_by_byte_matches_whole(data: bytes) -> None:
    whole = outcome([data])
    assert whole.result is not None
    assert outcome(byte_by_byte(data)) == whole


@pytest.mark.parametrize(
    "request_bytes",
    [upgrade_request(), upgrade_request(extra_headers=[("Content-Length", "0")])],
    ids=["plain", "content-length 0"],
)
def test_trailing_frames_survive_every_feeding(request_bytes: bytes) -> None:
    data = request_bytes + EAGER_FRAMES
    for chunks in ([data], byte_by_byte(data), split_at(data, [len(request_bytes) + 3])):
        got = outcome(chunks)
        assert got.head is not None and got.head.startswith(b"HTTP/1.1 101 ")
        assert got.after_request == EAGER_FRAMES


@settings(max_examples=60, deadline=None)
@given(
    case=st.sampled_from([c[1] for c in SPLIT_CASES]),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_split_points_do_not_matter(case: bytes, cuts: list[int]) -> None:
    assert outcome(split_at(case, cuts)) == outcome([case])


def test_absolute_form_target_routes_by_path() -> None:
    # RFC 9112 §3.2.2: a server must accept the absolute form of a target.
    request = Request("GET", "http://example.com/ws?room=a&name=b", headers=())
    assert request.path == "/ws"
    assert request.query == {"room": "a", "name": "b"}
    assert Request("GET", "http://example.com", headers=()).path == "/"
