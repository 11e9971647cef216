"""The Python client's protocol rules without sockets (``wsnet.client.session``):
positions, resume, resend by cid and duplicate drops. The client against the
real server is tests/test_live_client.py."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from wsnet.client.session import ClientSession

Event = dict[str, Any]


def frame(*events: Event) -> str:
    return json.dumps(list(events))


def presence(room: str, epoch: str, seq: int) -> Event:
    return {"type": "presence", "room": room, "epoch": epoch, "seq": seq, "count": 1,
            "members": []}


def message(room: str, seq: int, text: str, sender: str = "bob", cid: str | None = None) -> Event:
    event: Event = {"type": "message", "room": room, "seq": seq, "from": sender,
                    "from_id": "2", "text": text, "ts": 0}
    if cid is not None:
        event["cid"] = cid
    return event


def commands(frames: list[str]) -> list[Event]:
    return [json.loads(f) for f in frames]


def connected(session: ClientSession, name: str = "ann") -> list[str]:
    out = session.connection_made()
    session.receive(frame({"type": "welcome", "id": "1", "name": name}))
    return out


def test_a_first_join_starts_at_the_rooms_seq_and_delivers_in_order() -> None:
    s = ClientSession(name="ann")
    s.join("dev")
    assert parse_qs(s.query()) == {"name": ["ann"], "room": ["dev"]}
    connected(s)
    got, _ = s.receive(frame(presence("dev", "e1", 7), message("dev", 8, "a"),
                             message("dev", 8, "a again"), message("dev", 9, "b")))
    assert [e.get("text") for e in got if e["type"] == "message"] == ["a", "b"]
    assert (s.rooms["dev"].epoch, s.rooms["dev"].seq) == ("e1", 9)


def test_a_reconnection_resumes_every_room_and_resends_after_its_join_answer() -> None:
    s = ClientSession(name="ann")
    s.join("dev")
    s.join("ops")
    out = connected(s)
    assert commands(out) == [{"type": "join", "room": "ops"}]
    s.receive(frame(presence("dev", "e1", 3), presence("ops", "e9", 0)))
    cid, sent = s.send("ops", "hello")
    assert commands(sent) == [{"type": "message", "room": "ops", "text": "hello", "cid": cid}]
    s.connection_lost()
    _, offline = s.send("dev", "typed while away")
    assert offline == []  # queued, not lost
    assert parse_qs(s.query()) == {"name": ["ann"], "room": ["dev"], "since": ["3"],
                                   "epoch": ["e1"]}
    out = connected(s)
    assert commands(out) == [{"type": "join", "room": "ops", "since": 0, "epoch": "e9"}]
    _, reply = s.receive(frame(presence("dev", "e1", 3)))
    assert [c["text"] for c in commands(reply)] == ["typed while away"]
    _, reply = s.receive(frame(presence("ops", "e9", 0)))
    assert commands(reply) == [{"type": "message", "room": "ops", "text": "hello", "cid": cid}]
    # Its echo acknowledges it; the server's answer to a resend (the first
    # event again) is a repeat and not delivered twice.
    got, _ = s.receive(frame(message("ops", 1, "hello", "ann", cid)))
    assert [e["text"] for e in got] == ["hello"] and cid not in s.outbox
    again, _ = s.receive(frame(message("ops", 1, "hello", "ann", cid)))
    assert again == []


def test_a_new_epoch_starts_over_from_the_reset_gap() -> None:
    s = ClientSession(name="ann")
    s.join("dev")
    connected(s)
    s.receive(frame(presence("dev", "e1", 5)))
    got, _ = s.receive(frame(
        presence("dev", "e2", 2),
        {"type": "gap", "room": "dev", "since": 5, "first": 1, "reset": True},
        message("dev", 1, "new one"), message("dev", 2, "new two"),
    ))
    assert [e["type"] for e in got] == ["presence", "gap", "message", "message"]
    assert (s.rooms["dev"].epoch, s.rooms["dev"].seq) == ("e2", 2)


def test_unavailable_keeps_a_message_other_refusals_drop_it() -> None:
    s = ClientSession(name="ann")
    s.join("dev")
    connected(s)
    s.receive(frame(presence("dev", "e1", 0)))
    kept, _ = s.send("dev", "try me later")
    dropped, _ = s.send("dev", "x" * 5000)
    got, _ = s.receive(frame(
        {"type": "error", "error": "unavailable", "detail": "d", "room": "dev", "cid": kept},
        {"type": "error", "error": "text_too_long", "detail": "d", "room": "dev",
         "cid": dropped},
    ))
    assert [e["error"] for e in got] == ["text_too_long"]
    assert list(s.outbox) == [kept]
    assert [c["cid"] for c in commands(s.resend_unavailable())] == [kept]
    assert s.resend_unavailable() == []  # sent once per try


def test_a_read_only_room_stays_joined_when_a_message_is_refused() -> None:
    s = ClientSession(token="t")
    s.join("news")
    connected(s)
    s.receive(frame(presence("news", "e1", 4)))
    cid, _ = s.send("news", "may I?")
    got, _ = s.receive(frame({"type": "error", "error": "forbidden", "detail": "read only",
                              "room": "news", "cid": cid}))
    assert [e["error"] for e in got] == ["forbidden"] and cid not in s.outbox
    assert "news" in s.rooms and s.rooms["news"].seq == 4  # still there, still resumed


def test_a_forbidden_room_is_not_resumed_and_an_unasked_lobby_is_left() -> None:
    s = ClientSession(token="t")
    s.join("private:ops")
    connected(s)
    got, reply = s.receive(frame(
        {"type": "error", "error": "forbidden", "detail": "d", "room": "private:ops"},
        presence("lobby", "e1", 0),
    ))
    assert [e["type"] for e in got] == ["error"]
    assert "private:ops" not in s.rooms
    assert commands(reply) == [{"type": "leave", "room": "lobby"}]
