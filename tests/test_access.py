"""Room permissions, direct messages and typing, without sockets: token grants
(``wsnet.tokens``), the access table (``wsnet.chat.access``), and ``Chat``
applying both. The live counterparts are in tests/test_live_access.py."""

from __future__ import annotations

import pytest
from support.harness import Event, Harness

from wsnet.chat.access import Access, dm_names, dm_room, room_access
from wsnet.chat.protocol import valid_room
from wsnet.tokens import Grant, Token, TokenError, _b64, _sign, make_token, read_token

SECRET = b"a test secret, 32 bytes or so..."
NOW = 1_700_000_000.0
LATER = int(NOW) + 3600


# -- tokens ------------------------------------------------------------------


def test_grants_round_trip_and_old_tokens_still_verify() -> None:
    grants = [Grant("private:ops"), Grant("team-*", read_only=True, expires_at=LATER - 60)]
    token = make_token(SECRET, "ann", LATER, grants)
    assert token.count(".") == 3
    assert read_token(SECRET, token, NOW) == Token("ann", LATER, tuple(grants))
    plain = make_token(SECRET, "bob", LATER)
    assert plain.count(".") == 2
    assert read_token(SECRET, plain, NOW) == Token("bob", LATER, ())


def test_grants_cannot_be_widened_moved_or_dropped() -> None:
    token = make_token(SECRET, "ann", LATER, [Grant("news", read_only=True)])
    name, expiry, _, signature = token.split(".")
    wider = _b64(b'[{"room":"news"}]')
    other = make_token(SECRET, "bob", LATER, [Grant("private:*")]).split(".")[2]
    forgeries = {
        "claims rewritten": f"{name}.{expiry}.{wider}.{signature}",
        "claims from another token": f"{name}.{expiry}.{other}.{signature}",
        "claims dropped": f"{name}.{expiry}.{signature}",
    }
    for what, forged in forgeries.items():
        with pytest.raises(TokenError, match="bad_signature"):
            read_token(SECRET, forged, NOW)
            pytest.fail(f"{what} accepted")
    with pytest.raises(TokenError, match="bad_signature"):
        read_token(b"another secret", token, NOW)
    with pytest.raises(TokenError, match="expired"):
        read_token(SECRET, token, LATER)


@pytest.mark.parametrize(
    "claims",
    [b"{}", b"[1]", b'[{"room":1}]', b'[{"room":"a","read_only":"yes"}]',
     b'[{"room":"a","exp":-1}]', b'[{"room":"a","exp":1.5}]', b'[{"room":"a*b"}]',
     b"not json", b"[" * 2000 + b"]" * 2000],
)
def test_signed_but_malformed_claims_are_refused(claims: bytes) -> None:
    parts = [_b64(b"ann"), str(LATER), _b64(claims)]
    token = ".".join([*parts, _sign(SECRET, *parts)])
    with pytest.raises(TokenError, match="malformed"):
        read_token(SECRET, token, NOW)


def test_make_token_refuses_what_it_could_not_read_back() -> None:
    with pytest.raises(ValueError, match="prefix"):
        Grant("a*b")
    with pytest.raises(ValueError, match="grants"):
        make_token(SECRET, "ann", LATER, [Grant(f"room{i}") for i in range(65)])


# -- the access table ----------------------------------------------------------

RO = (Grant("news", read_only=True),)
OPS = (Grant("private:ops"),)
TEAM = (Grant("private:team-*"),)
EXPIRED = (Grant("private:ops", expires_at=int(NOW)),)
BOTH = (Grant("private:ops", read_only=True), Grant("private:*"))

W, R, N = Access.WRITE, Access.READ, Access.NONE


@pytest.mark.parametrize(
    ("room", "name", "grants", "require", "expected"),
    [
        # public rooms: open to all, read-only where a grant says so
        ("lobby", None, (), False, W),
        ("lobby", "ann", (), False, W),
        ("news", "ann", RO, False, R),
        ("lobby", "ann", (), True, N),  # --rooms-require-claim
        ("news", "ann", RO, True, R),
        # private rooms: a current grant, exact or by prefix
        ("private:ops", None, (), False, N),
        ("private:ops", "ann", (), False, N),
        ("private:ops", "ann", OPS, False, W),
        ("private:opsx", "ann", OPS, False, N),  # exact means exact
        ("private:team-red", "ann", TEAM, False, W),
        ("private:team", "ann", TEAM, False, N),
        ("private:ops", "ann", EXPIRED, False, N),  # expired at NOW
        ("private:ops", "ann", BOTH, False, W),  # the widest grant wins
        ("private:ops", "ann", (Grant("private:ops", read_only=True),), False, R),
        # direct messages: the two names, by token, in canonical order only
        ("dm:ann:bob", "ann", (), False, W),
        ("dm:ann:bob", "bob", (), False, W),
        ("dm:ann:bob", "cy", (), False, N),
        ("dm:ann:bob", None, (), False, N),  # a guest called ann is not ann
        ("dm:bob:ann", "ann", (), False, N),  # not canonical
        ("dm:ann:ann", "ann", (), False, N),
        ("dm:ann:bob", "cy", (Grant("dm:*"),), False, N),  # grants do not open DMs
        ("dm:ann lee:bob", "ann lee", (), True, W),
    ],
)
def test_room_access(
    room: str, name: str | None, grants: tuple[Grant, ...], require: bool, expected: Access,
) -> None:
    assert room_access(room, name, grants, NOW, require_claim=require) is expected


def test_dm_room_names() -> None:
    assert dm_room("bob", "ann") == dm_room("ann", "bob") == "dm:ann:bob"
    assert dm_names("dm:ann:bob") == ("ann", "bob")
    assert dm_names("dm:bob:ann") is None and dm_names("dm:ann") is None
    assert valid_room("dm:ann lee:bob") and valid_room("private:ops")
    assert dm_names("dm:ann:bob:cy") is None and not valid_room("private ops")
    assert valid_room(dm_room("Ω" * 32, "z" * 32))  # two longest names still fit


# -- the chat applying it ----------------------------------------------------------


def token_user(h: Harness, name: str, room: str | None, *grants: Grant) -> list[Event]:
    return h.connect(name, room, pinned=True, grants=grants)


def errors(events: list[Event]) -> list[tuple[str, str | None]]:
    return [(e["error"], e.get("room")) for e in events if e["type"] == "error"]


def test_a_join_without_a_grant_learns_nothing_about_the_room() -> None:
    h = Harness()
    token_user(h, "ann", "private:ops", Grant("private:ops"))
    h.send("ann", {"type": "message", "room": "private:ops", "text": "secret"})
    h.tick()
    busy = token_user(h, "bob", "private:ops")
    empty = token_user(h, "cy", "private:nothing-here")
    assert errors(busy) == [("forbidden", "private:ops")]
    assert errors(empty) == [("forbidden", "private:nothing-here")]
    # The same words, and nothing else but the welcome: no presence, no count.
    assert [e["type"] for e in busy] == [e["type"] for e in empty] == ["welcome", "error"]
    assert busy[1]["detail"] == empty[1]["detail"]
    h.send("bob", {"type": "join", "room": "private:ops", "since": 0})
    h.send("bob", {"type": "message", "room": "private:ops", "text": "let me in"})
    got = h.tick()
    assert errors(got["bob"]) == [("forbidden", "private:ops"), ("not_in_room", "private:ops")]
    assert "ann" not in got  # ann heard nothing of it
    assert h.chat.rooms["private:ops"].seq == 1


def test_a_read_only_grant_reads_but_cannot_write_or_type() -> None:
    h = Harness()
    token_user(h, "ann", "private:ops", Grant("private:ops"))
    joined = token_user(h, "bob", "private:ops", Grant("private:ops", read_only=True))
    assert [e["type"] for e in joined] == ["welcome", "presence"]
    h.tick()
    h.send("ann", {"type": "message", "room": "private:ops", "text": "hi"})
    h.send("bob", {"type": "message", "room": "private:ops", "text": "me too", "cid": "c1"})
    h.send("bob", {"type": "typing", "room": "private:ops"})
    got = h.tick()
    bob = got["bob"]
    assert [e["text"] for e in bob if e["type"] == "message"] == ["hi"]
    refusal = next(e for e in bob if e["type"] == "error")
    assert (refusal["error"], refusal["cid"]) == ("forbidden", "c1")
    assert not any(e["type"] == "typing" for e in got["ann"])
    assert h.chat.rooms["private:ops"].seq == 1


def test_an_expired_grant_closes_the_room_to_joins_and_writes() -> None:
    h = Harness()
    until = int(h.clock()) + 60
    token_user(h, "ann", "private:ops", Grant("private:ops", expires_at=until))
    h.tick()
    h.clock.advance(61)
    h.send("ann", {"type": "message", "room": "private:ops", "text": "late"})
    assert errors(h.tick()["ann"]) == [("forbidden", "private:ops")]
    h.send("ann", {"type": "leave", "room": "private:ops"})
    h.send("ann", {"type": "join", "room": "private:ops"})
    assert errors(h.tick()["ann"]) == [("forbidden", "private:ops")]


def test_direct_messages_reach_only_their_two_names() -> None:
    h = Harness()
    room = dm_room("bob", "ann")
    token_user(h, "ann", room)
    token_user(h, "bob", room)
    assert errors(token_user(h, "cy", room)) == [("forbidden", room)]
    assert errors(h.connect("ann-guest", room)) == [("forbidden", room)]
    h.members["ann-guest"].name = "ann"  # a guest renamed: still not the token's ann
    h.send("ann-guest", {"type": "join", "room": room})
    h.tick()
    h.send("ann", {"type": "message", "room": room, "text": "just us"})
    got = h.tick()
    assert set(got) == {"ann", "bob"}
    assert errors(token_user(h, "cy2", "dm:bob:ann")) == [("forbidden", "dm:bob:ann")]
    # History and resume work as in any room.
    h.drop("bob")
    token_user(h, "bob", None)
    h.send("bob", {"type": "join", "room": room, "since": 0})
    replay = h.tick()["bob"]
    assert [e["text"] for e in replay if e["type"] == "message"] == ["just us"]


def test_every_room_needs_a_grant_with_require_claim() -> None:
    h = Harness(rooms_require_claim=True)
    assert errors(h.connect("guest")) == [("forbidden", "lobby")]
    assert errors(token_user(h, "ann", "lobby", Grant("lobby"))) == []


# -- typing --------------------------------------------------------------------------


def typing(events: list[Event]) -> list[Event]:
    return [e for e in events if e["type"] == "typing"]


def test_typing_reaches_the_room_at_most_once_per_interval_and_is_never_kept() -> None:
    h = Harness()
    h.connect("ann", "dev")
    h.connect("bob", "dev")
    h.connect("cy", "other")
    h.tick()
    h.send("ann", {"type": "typing", "room": "dev"})
    h.send("ann", {"type": "typing", "room": "dev"})  # within 2 s: dropped
    got = h.tick()
    assert typing(got["bob"]) == [{"type": "typing", "room": "dev", "id": "ann", "name": "ann"}]
    assert "cy" not in got
    h.clock.advance(1.9)
    h.send("ann", {"type": "typing", "room": "dev"})
    assert h.tick() == {}
    h.clock.advance(0.2)
    h.send("ann", {"type": "typing", "room": "dev"})
    assert len(typing(h.tick()["bob"])) == 1
    room = h.chat.rooms["dev"]
    assert room.seq == 0 and not room.history  # not numbered, not stored
    h.connect("dee", None)
    h.send("dee", {"type": "join", "room": "dev", "since": 0})
    assert typing(h.tick()["dee"]) == []  # never replayed
    h.send("cy", {"type": "typing", "room": "dev"})
    assert errors(h.tick()["cy"]) == [("not_in_room", "dev")]


def test_no_typing_where_presence_is_a_count() -> None:
    h = Harness(presence_limit=2)
    for name in ("ann", "bob", "cy"):
        h.connect(name, "big")
    h.tick()
    h.send("ann", {"type": "typing", "room": "big"})
    assert not any(typing(events) for events in h.tick().values())
