"""``Session`` driven by a wsproto CLIENT peer (plus hand-made frames for what a
correct client cannot send). Every case is fed whole, byte by byte, and at
hypothesis-chosen split points, and must end the same way."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.peer import ClientPeer, SessionRun, drain, feed_session, new_session
from support.wire import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    byte_by_byte,
    raw_frame,
    split_at,
)
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Event, Ping, Pong

from wsnet._frames import Outgoing
from wsnet._session import CloseCode, _at_frame_boundary

MiB = 1 << 20
Reply = tuple[str, object]


@dataclass
class Case:
    """Client bytes and what the session must make of them."""

    wire: bytes
    messages: list[str | bytes]
    code: int | None = None
    #: What a client reads back from the server: ("pong", payload) or
    #: ("close", code). Compared in order.
    replies: tuple[Reply, ...] = ()
    max_bytes: int = MiB
    eof: bool = False


def summary(events: list[Event]) -> tuple[Reply, ...]:
    out: list[Reply] = []
    for event in events:
        if isinstance(event, Pong):
            out.append(("pong", bytes(event.payload)))
        elif isinstance(event, CloseConnection):
            out.append(("close", int(event.code)))
        elif isinstance(event, Ping):
            out.append(("ping", bytes(event.payload)))
        else:
            out.append((type(event).__name__, getattr(event, "data", None)))
    return tuple(out)


def replies_of(output: bytes) -> tuple[Reply, ...]:
    return summary(ClientPeer().receive(output))


def close(code: int) -> tuple[Reply, ...]:
    return (("close", code),)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


# Each builder gets a fresh wsproto client (random masks) and returns a Case.
Builder = Callable[[ClientPeer], Case]

CASES: dict[str, Builder] = {
    "text": lambda p: Case(p.text("hello"), ["hello"]),
    "binary": lambda p: Case(p.binary(b"\x00\xff\x10"), [b"\x00\xff\x10"]),
    "unicode": lambda p: Case(p.text("h\xe9llo \u2713 \U0001f600"), ["h\xe9llo \u2713 \U0001f600"]),
    "empty messages": lambda p: Case(p.text("") + p.binary(b""), ["", b""]),
    "several": lambda p: Case(
        p.text("a") + p.binary(b"b") + p.text("c" * 300), ["a", b"b", "c" * 300],
    ),
    "64-bit length": lambda p: Case(p.binary(bytes(70_000)), [bytes(70_000)]),
    "fragmented text": lambda p: Case(
        p.text("hel", fin=False) + p.text("lo w", fin=False) + p.text("orld"), ["hello world"],
    ),
    "fragmented binary": lambda p: Case(
        p.binary(b"\x01", fin=False) + p.binary(b"", fin=False) + p.binary(b"\x02\x03"),
        [b"\x01\x02\x03"],
    ),
    "ping": lambda p: Case(p.ping(b"abc"), [], replies=(("pong", b"abc"),)),
    "empty ping": lambda p: Case(p.ping(), [], replies=(("pong", b""),)),
    "two pings": lambda p: Case(
        p.ping(b"1") + p.text("x") + p.ping(b"2"), ["x"], replies=(("pong", b"1"), ("pong", b"2")),
    ),
    "unsolicited pong": lambda p: Case(p.pong(b"x"), []),
    "ping inside a fragmented message": lambda p: Case(
        p.text("hel", fin=False) + p.ping(b"mid") + p.text("lo"),
        ["hello"],
        replies=(("pong", b"mid"),),
    ),
    "remote close": lambda p: Case(p.close(1000, "bye"), [], 1000, close(1000)),
    "remote close 1001": lambda p: Case(p.close(1001), [], 1001, close(1001)),
    "remote close app code": lambda p: Case(p.close(4000, "app"), [], 4000, close(4000)),
    "remote close without code": lambda p: Case(p.close(None), [], 1005, close(1005)),
    "message then close": lambda p: Case(p.text("a") + p.close(1000), ["a"], 1000, close(1000)),
    "close inside a fragmented message": lambda p: Case(
        p.text("a", fin=False) + p.close(1000), [], 1000, close(1000),
    ),
    "data after close is dropped": lambda p: Case(
        p.close(1000) + raw_frame(OP_TEXT, b"late") + raw_frame(OP_PING, b"late"),
        [],
        1000,
        close(1000),
    ),
    "exactly the limit": lambda p: Case(p.text("a" * 100), ["a" * 100], max_bytes=100),
    "over the limit": lambda p: Case(p.text("a" * 101), [], 1009, close(1009), max_bytes=100),
    "binary over the limit": lambda p: Case(
        p.binary(bytes(101)), [], 1009, close(1009), max_bytes=100,
    ),
    "over the limit in fragments": lambda p: Case(
        b"".join(p.text("a" * 10, fin=False) for _ in range(10)) + p.text("a"),
        [],
        1009,
        close(1009),
        max_bytes=100,
    ),
    "limit in fragments exactly": lambda p: Case(
        b"".join(p.binary(bytes(10), fin=False) for _ in range(9)) + p.binary(bytes(10)),
        [bytes(100)],
        max_bytes=100,
    ),
    "limit counts UTF-8 bytes": lambda p: Case(
        p.text("\xe9" * 50) + p.text("\xe9" * 51), ["\xe9" * 50], 1009, close(1009), max_bytes=100,
    ),
    "limit is per message": lambda p: Case(
        p.text("a" * 60) + p.text("b" * 60), ["a" * 60, "b" * 60], max_bytes=100,
    ),
    "messages before a too-big one": lambda p: Case(
        p.text("ok") + p.text("x" * 200) + p.text("never"),
        ["ok"],
        1009,
        close(1009),
        max_bytes=100,
    ),
    "invalid UTF-8": lambda p: Case(raw_frame(OP_TEXT, b"ok\xff"), [], 1007, close(1007)),
    "UTF-8 split across fragments": lambda p: Case(
        raw_frame(OP_TEXT, b"a\xc3", fin=False) + raw_frame(OP_CONT, b"\xa9b"), ["a\xe9b"],
    ),
    "4-byte char in three fragments": lambda p: Case(
        raw_frame(OP_TEXT, b"\xf0", fin=False)
        + raw_frame(OP_CONT, b"\x9f\x98", fin=False)
        + raw_frame(OP_CONT, b"\x80"),
        ["\U0001f600"],
    ),
    "invalid UTF-8 split across fragments": lambda p: Case(
        raw_frame(OP_TEXT, b"a\xc3", fin=False) + raw_frame(OP_CONT, b"(b"),
        [],
        1007,
        close(1007),
    ),
    "UTF-8 truncated at the end": lambda p: Case(
        raw_frame(OP_TEXT, b"a", fin=False) + raw_frame(OP_CONT, b"\xe2\x82"),
        [],
        1007,
        close(1007),
    ),
    "surrogate in UTF-8": lambda p: Case(
        raw_frame(OP_TEXT, b"\xed\xa0\x80"), [], 1007, close(1007),
    ),
    "unmasked client frame": lambda p: Case(
        raw_frame(OP_TEXT, b"hi", masked=False), [], 1002, close(1002),
    ),
    "reserved data opcode": lambda p: Case(raw_frame(0x3, b"x"), [], 1002, close(1002)),
    "reserved control opcode": lambda p: Case(raw_frame(0xB, b""), [], 1002, close(1002)),
    "RSV1 without deflate": lambda p: Case(
        raw_frame(OP_TEXT, b"x", rsv1=True), [], 1002, close(1002),
    ),
    "continuation without a start": lambda p: Case(
        raw_frame(OP_CONT, b"x"), [], 1002, close(1002),
    ),
    "new message inside a fragmented one": lambda p: Case(
        p.text("a", fin=False) + raw_frame(OP_BINARY, b"b"), [], 1002, close(1002),
    ),
    "fragmented ping": lambda p: Case(raw_frame(OP_PING, b"x", fin=False), [], 1002, close(1002)),
    "ping over 125 bytes": lambda p: Case(raw_frame(OP_PING, bytes(126)), [], 1002, close(1002)),
    "non-minimal length": lambda p: Case(
        bytes((0x81, 0x80 | 126, 0, 5)) + b"\x00\x00\x00\x00hello", [], 1002, close(1002),
    ),
    "close with 1-byte payload": lambda p: Case(
        raw_frame(OP_CLOSE, b"\x03"), [], 1002, close(1002),
    ),
    "close code 999": lambda p: Case(
        raw_frame(OP_CLOSE, close_payload(999)), [], 1002, close(1002),
    ),
    "close code 1005 on the wire": lambda p: Case(
        raw_frame(OP_CLOSE, close_payload(1005)), [], 1002, close(1002),
    ),
    "close reason not UTF-8": lambda p: Case(
        raw_frame(OP_CLOSE, close_payload(1000, b"\xff")), [], 1007, close(1007),
    ),
    "messages before a protocol error": lambda p: Case(
        p.text("ok") + raw_frame(OP_TEXT, b"x", masked=False) + p.text("never"),
        ["ok"],
        1002,
        close(1002),
    ),
    "nothing read after a protocol error": lambda p: Case(
        raw_frame(0x3) + p.ping(b"p") + p.close(1000), [], 1002, close(1002),
    ),
    "EOF": lambda p: Case(p.text("a"), ["a"], 1006, eof=True),
    "EOF inside a message": lambda p: Case(p.text("a", fin=False), [], 1006, eof=True),
    "EOF after close": lambda p: Case(p.close(1000), [], 1000, close(1000), eof=True),
}


def check(case: Case, run: SessionRun) -> None:
    assert run.messages == case.messages
    assert run.close_code == case.code
    assert replies_of(run.output) == case.replies
    if case.code is None:
        assert run.is_open and not run.closing_done and not run.parser_dead
    else:
        assert not run.is_open
        assert run.closing_done  # nothing more to wait for in any of these cases


def chunks_with_eof(case: Case, chunks: list[bytes]) -> list[bytes | None]:
    return [*chunks, None] if case.eof else list(chunks)


@pytest.mark.parametrize("name", CASES)
def test_fed_whole(name: str) -> None:
    case = CASES[name](ClientPeer())
    check(case, feed_session(chunks_with_eof(case, [case.wire]), max_message_bytes=case.max_bytes))


@pytest.mark.parametrize("name", CASES)
def test_fed_byte_by_byte(name: str) -> None:
    case = CASES[name](ClientPeer())
    whole = feed_session(chunks_with_eof(case, [case.wire]), max_message_bytes=case.max_bytes)
    chunks = chunks_with_eof(case, byte_by_byte(case.wire))
    bytewise = feed_session(chunks, max_message_bytes=case.max_bytes)
    check(case, bytewise)
    assert bytewise == whole


@settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from(sorted(CASES)),
    cuts=st.lists(st.integers(min_value=0, max_value=200_000), max_size=16),
)
def test_split_points_do_not_matter(name: str, cuts: list[int]) -> None:
    case = CASES[name](ClientPeer())
    whole = feed_session(chunks_with_eof(case, [case.wire]), max_message_bytes=case.max_bytes)
    run = feed_session(
        chunks_with_eof(case, split_at(case.wire, cuts)), max_message_bytes=case.max_bytes,
    )
    check(case, run)
    assert run == whole


# ----------------------------------------------------------------------------
# Details the table does not show
# ----------------------------------------------------------------------------


def test_remote_close_is_echoed_with_its_reason() -> None:
    peer = ClientPeer()
    session = new_session()
    assert session.receive(peer.close(1000, "see you")) == []
    assert session.close_code == 1000 and session.close_reason == "see you"
    events = peer.receive(drain(session.out))
    assert events == [CloseConnection(code=1000, reason="see you")]
    assert peer.state is ConnectionState.CLOSED
    assert session.closing_done and not session.is_open
    # Nothing more is read or sent.
    assert session.receive(raw_frame(OP_TEXT, b"x")) == []
    assert session.receive(None) == []
    assert session.close_code == 1000
    assert drain(session.out) == b""


def test_local_close_then_peer_reply() -> None:
    peer = ClientPeer()
    session = new_session()
    session.close(1001, "going away")
    assert not session.is_open
    assert not session.closing_done  # waiting for the peer's close frame
    assert session.close_code == 1001 and session.close_reason == "going away"
    events = peer.receive(drain(session.out))
    assert events == [CloseConnection(code=1001, reason="going away")]
    # The peer answers (wsproto's client echoes the code).
    reply = peer.close(1001)
    assert session.receive(reply[:3]) == []
    assert not session.closing_done
    assert session.receive(reply[3:]) == []
    assert session.closing_done
    assert session.close_code == 1001  # ours, recorded once
    assert drain(session.out) == b""  # no second close frame
    session.close(1000)  # no-op once closed
    assert drain(session.out) == b""


def test_local_close_ignores_pings_and_late_data() -> None:
    peer = ClientPeer()
    session = new_session()
    session.close()
    peer.receive(drain(session.out))
    late = raw_frame(OP_PING, b"p") + raw_frame(OP_TEXT, b"late")
    assert feed_session(byte_by_byte(late), session=session).messages == []
    assert drain(session.out) == b""  # no pong once closing
    session.receive(peer.close(1000))
    assert session.closing_done


def late_data_then_close_reply() -> tuple[bytes, ClientPeer]:
    """The peer sent a message before it saw our close, then its close reply."""
    peer = ClientPeer()
    wire = peer.text("in flight") + peer.close(1000)
    return wire, peer


def test_local_close_with_late_data_and_reply_byte_by_byte() -> None:
    wire, _peer = late_data_then_close_reply()
    session = new_session()
    session.close(1000)
    run = feed_session(byte_by_byte(wire), session=session)
    assert run.messages == []
    assert run.closing_done
    assert run.close_code == 1000


def test_local_close_with_late_data_and_reply_in_one_read() -> None:
    wire, _peer = late_data_then_close_reply()
    session = new_session()
    session.close(1000)
    run = feed_session([wire], session=session)
    assert run.messages == []
    assert run.closing_done
    assert run.close_code == 1000


def test_eof_after_local_close_keeps_our_code() -> None:
    session = new_session()
    session.close(1000)
    assert session.receive(None) == []
    assert session.close_code == 1000
    assert session.closing_done


def test_eof_is_1006_and_sends_nothing() -> None:
    session = new_session()
    session.receive(ClientPeer().text("a", fin=False))
    assert session.receive(None) == []
    assert session.close_code == 1006
    assert int(CloseCode.ABNORMAL_CLOSURE) == 1006
    assert session.closing_done and not session.is_open
    assert drain(session.out) == b""
    assert session.receive(None) == []  # a second EOF changes nothing
    assert session.close_code == 1006


def test_empty_read_is_not_eof() -> None:
    session = new_session()
    assert session.receive(b"") == []
    assert session.is_open and session.close_code is None


def test_protocol_error_fails_the_connection() -> None:
    session = new_session()
    session.receive(raw_frame(OP_TEXT, b"x", masked=False))
    assert session.parser_dead and session.closing_done
    assert session.close_code == 1002
    assert replies_of(drain(session.out)) == close(1002)
    # The parser is dead: a valid close frame afterwards is not read.
    assert session.receive(ClientPeer().close(1000)) == []
    assert drain(session.out) == b""
    assert session.close_code == 1002


def test_close_reasons_on_the_wire_do_not_echo_peer_input() -> None:
    session = new_session()
    session.receive(raw_frame(0x3, b"secret"))
    events = ClientPeer().receive(drain(session.out))
    assert isinstance(events[0], CloseConnection)
    assert "secret" not in (events[0].reason or "")
    assert "0x3" not in (events[0].reason or "")


def test_ping_pong_flag() -> None:
    peer = ClientPeer()
    session = new_session()
    session.ping(b"keepalive")
    assert not session.pong_seen
    assert summary(peer.receive(drain(session.out))) == (("ping", b"keepalive"),)
    session.receive(peer.pong(b"keepalive"))
    assert session.pong_seen
    session.ping()
    assert not session.pong_seen


def test_send_only_while_open() -> None:
    peer = ClientPeer()
    session = new_session()
    assert session.send(Outgoing("one"))
    assert session.send(Outgoing(b"two"))
    assert peer.messages(drain(session.out)) == ["one", b"two"]
    session.close()
    drain(session.out)
    assert not session.send(Outgoing("late"))
    session.ping()
    assert drain(session.out) == b""


def test_fail_sends_one_close_and_stops_reading() -> None:
    session = new_session()
    session.receive(ClientPeer().text("partial", fin=False))
    session.fail(1008, "slow consumer")
    assert session.close_code == 1008 and session.parser_dead and session.closing_done
    events = ClientPeer().receive(drain(session.out))
    assert events == [CloseConnection(code=1008, reason="slow consumer")]
    assert session.receive(ClientPeer().text("more")) == []
    session.fail(1011)
    assert drain(session.out) == b""
    assert session.close_code == 1008


# ----------------------------------------------------------------------------
# Pongs read without wsproto (the keepalive's fast path)
# ----------------------------------------------------------------------------


def test_a_whole_pong_between_frames_is_seen_and_messages_around_it_still_parse() -> None:
    client = ClientPeer()
    session = new_session()
    assert _at_frame_boundary(session._ws)  # wsproto's internals are where we read them
    session.ping(b"wsnet")
    session.pong_seen = False
    assert session.receive(client.text("before")) == ["before"]
    assert session.receive(client.pong(b"wsnet")) == []
    assert session.pong_seen
    assert session.receive(client.pong(b"")) == []  # an empty pong is 6 bytes
    assert session.receive(client.text("after")) == ["after"]
    assert session.close_code is None


def test_bytes_that_look_like_a_pong_inside_a_frame_are_its_payload() -> None:
    """The fast path must not take a frame's payload for a pong: the first
    feed leaves wsproto in the middle of a frame whose 11 payload bytes follow."""
    client = ClientPeer()
    session = new_session()
    fake_pong = ClientPeer().pong(b"wsnet")
    assert len(fake_pong) == 11
    # A zero mask key: the payload goes on the wire as it is.
    frame = raw_frame(OP_BINARY, fake_pong, mask_key=b"\x00\x00\x00\x00")
    header, payload = frame[:6], frame[6:]
    assert payload == fake_pong
    session.pong_seen = False
    assert session.receive(header) == []
    assert session.receive(payload) == [fake_pong]
    assert not session.pong_seen
    assert session.receive(client.text("next")) == ["next"]


def test_a_pong_glued_to_other_bytes_goes_through_wsproto() -> None:
    client = ClientPeer()
    session = new_session()
    assert session.receive(client.pong(b"wsnet") + client.text("x")) == ["x"]
    assert session.pong_seen
