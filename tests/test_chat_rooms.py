"""Rooms, presence, history and batching (``wsnet.chat.rooms``) without sockets:
commands in, ``(peers, frame)`` batches out, on a fake clock."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.harness import Event, Harness

from wsnet.chat.app import ChatApp
from wsnet.chat.history import Ledger
from wsnet.chat.presence import encoded_snapshot, snapshot_event
from wsnet.chat.protocol import ChatError
from wsnet.chat.rooms import ChatSettings
from wsnet.chat.state import Member, Room


def types(events: list[Event]) -> list[str]:
    return [e["type"] for e in events]


def message_seqs(events: list[Event], room: str = "lobby") -> list[int]:
    return [e["seq"] for e in events if e["type"] == "message" and e["room"] == room]


def join(room: str, **kw: Any) -> Event:
    return {"type": "join", "room": room, **kw}


def say(room: str, text: str, **kw: Any) -> Event:
    return {"type": "message", "room": room, "text": text, **kw}


# ----------------------------------------------------------------------------
# Welcome and presence
# ----------------------------------------------------------------------------


def test_welcome_frame_is_welcome_then_presence_of_the_default_room() -> None:
    h = Harness()
    h.connect("ann")
    events = h.connect("bob")
    assert events == [
        {"type": "welcome", "id": "bob", "name": "bob"},
        {
            "type": "presence", "room": "lobby", "epoch": "e1", "seq": 0, "count": 2,
            "members": [{"id": "ann", "name": "ann"}, {"id": "bob", "name": "bob"}],
        },
    ]
    # Ann hears bob join at the tick; bob does not hear his own join again.
    got = h.tick()
    assert got == {"ann": [{"type": "join", "room": "lobby", "id": "bob", "name": "bob"}]}


def test_url_errors_travel_in_the_welcome_frame_and_no_room_means_none_joined() -> None:
    h = Harness()
    events = h.connect("ann", room=None, errors=(ChatError("bad_room", "no"),))
    assert types(events) == ["welcome", "error"]
    assert h.chat.rooms == {}
    h.send("ann", "hello")
    assert h.tick()["ann"] == [
        {"type": "error", "error": "not_in_room", "detail": "join a room first"},
    ]


def test_leave_and_disconnect_are_announced_and_the_leaver_gets_its_ack() -> None:
    h = Harness()
    h.connect("ann")
    h.connect("bob")
    h.connect("cy")
    h.tick()
    h.send("bob", {"type": "leave", "room": "lobby"})
    h.drop("cy")
    got = h.tick()
    bob_leave = {"type": "leave", "room": "lobby", "id": "bob", "name": "bob"}
    cy_leave = {"type": "leave", "room": "lobby", "id": "cy", "name": "cy"}
    assert got == {"ann": [bob_leave, cy_leave], "bob": [bob_leave]}


def test_nick_is_acknowledged_and_announced_in_every_room() -> None:
    h = Harness()
    h.connect("ann")
    h.connect("bob")
    h.send("bob", join("dev"))
    h.send("ann", join("dev"))
    h.tick()
    h.send("ann", {"type": "nick", "name": "Ann Lee"})
    got = h.tick()
    ack = {"type": "nick", "id": "ann", "name": "Ann Lee", "old": "ann"}
    in_lobby = {"type": "nick", "room": "lobby", "id": "ann", "name": "Ann Lee", "old": "ann"}
    in_dev = {**in_lobby, "room": "dev"}
    assert got["ann"] == [ack, in_lobby, in_dev]
    assert got["bob"] == [in_lobby, in_dev]
    h.send("ann", "hi")
    assert h.tick()["bob"][0]["from"] == "Ann Lee"


def test_a_pinned_name_cannot_change() -> None:
    h = Harness()
    member, _ = h.chat.connect("ann", "ann", "ann", pinned=True, room="lobby")
    h.members["ann"] = member
    h.send("ann", {"type": "nick", "name": "mallory"})
    assert types(h.tick()["ann"]) == ["error"]
    assert member.name == "ann"


# ----------------------------------------------------------------------------
# Batching: one frame per tick per recipient, shared where possible
# ----------------------------------------------------------------------------


def test_a_member_of_two_rooms_gets_one_frame_with_both_rooms_events() -> None:
    h = Harness()
    for peer in ("ann", "bob", "cy"):
        h.connect(peer)
    h.send("ann", join("dev"))
    h.send("bob", join("dev"))
    h.tick()
    h.send("cy", say("lobby", "in lobby"))
    h.send("ann", say("dev", "in dev"))
    got = h.tick()
    assert [(e["room"], e["text"]) for e in got["ann"]] == [
        ("lobby", "in lobby"), ("dev", "in dev"),
    ]
    assert got["ann"] == got["bob"]
    assert [e["text"] for e in got["cy"]] == ["in lobby"]
    # Two distinct frames, each encoded once: ann and bob share theirs.
    assert sorted(sorted(peers) for peers, _ in h.last_flush) == [["ann", "bob"], ["cy"]]


def test_many_members_of_one_room_share_one_frame() -> None:
    h = Harness(presence_limit=1000)
    for i in range(200):
        h.connect(f"p{i}")
    h.tick()
    for i in range(5):
        h.send(f"p{i}", f"hello {i}")
    h.tick()
    assert len(h.last_flush) == 1
    peers, frame = h.last_flush[0]
    assert len(peers) == 200
    assert message_seqs(json.loads(frame)) == [1, 2, 3, 4, 5]


def test_replies_ride_in_the_same_frame_as_room_events() -> None:
    h = Harness()
    h.connect("ann")
    h.connect("bob")
    h.tick()
    h.send("ann", "first")
    h.send("ann", {"type": "dance"})
    h.send("bob", "second")
    got = h.tick()
    assert types(got["ann"]) == ["error", "message", "message"]
    assert types(got["bob"]) == ["message", "message"]


def test_mid_tick_joiner_skips_what_its_reply_already_covers() -> None:
    h = Harness()
    h.connect("ann")
    h.tick()
    h.send("ann", "before")
    events = h.connect("bob", since=0)
    # The reply holds the message sent before the join...
    assert message_seqs(events) == [1]
    h.send("ann", "after")
    got = h.tick()
    # ...and the tick brings only what came after it, once.
    assert message_seqs(got["bob"]) == [2]
    assert message_seqs(got["ann"]) == [1, 2]


def test_mid_tick_leaver_gets_what_came_before_its_leave_and_nothing_after() -> None:
    h = Harness()
    h.connect("ann")
    h.connect("bob")
    h.tick()
    h.send("ann", "before")
    h.send("bob", {"type": "leave", "room": "lobby"})
    h.send("ann", "after")
    got = h.tick()
    assert types(got["bob"]) == ["message", "leave"]
    assert message_seqs(got["bob"]) == [1]
    assert message_seqs(got["ann"]) == [1, 2]


def test_leave_and_rejoin_in_one_tick() -> None:
    h = Harness()
    h.connect("ann")
    h.connect("bob")
    h.tick()
    h.send("ann", "one")
    h.send("bob", {"type": "leave", "room": "lobby"})
    h.send("ann", "two")
    h.send("bob", join("lobby"))
    h.send("ann", "three")
    got = h.tick()
    # one (was there), leave ack, presence (rejoined: seq 2), three; "two" was
    # sent while bob was away and he did not ask for it with since.
    assert types(got["bob"]) == ["message", "leave", "presence", "message"]
    assert message_seqs(got["bob"]) == [1, 3]
    assert got["bob"][2]["seq"] == 2


def test_errors_for_commands_that_cannot_apply() -> None:
    h = Harness(max_rooms_per_client=2)
    h.connect("ann")
    h.send("ann", join("lobby"))
    h.send("ann", say("dev", "hi", cid="c1"))
    h.send("ann", {"type": "leave", "room": "dev"})
    h.send("ann", join("dev"))
    h.send("ann", join("ops"))
    got = h.tick()["ann"]
    errors = [(e["error"], e.get("room"), e.get("cid")) for e in got if e["type"] == "error"]
    assert errors == [
        ("already_joined", "lobby", None),
        ("not_in_room", "dev", "c1"),
        ("not_in_room", "dev", None),
        ("too_many_rooms", "ops", None),
    ]
    assert "ops" not in h.chat.rooms


def test_plain_text_goes_to_the_default_room_until_it_is_left() -> None:
    h = Harness()
    h.connect("ann", room="dev")
    h.send("ann", "hi")
    h.send("ann", {"type": "leave", "room": "dev"})
    h.send("ann", "hello?")
    got = h.tick()["ann"]
    assert [(e["type"], e.get("room")) for e in got] == [
        ("message", "dev"), ("leave", "dev"), ("error", "dev"),
    ]
    assert got[2]["error"] == "not_in_room"


def test_message_event_fields() -> None:
    h = Harness()
    h.connect("ann")
    h.clock.now = 1_795_855_995.535
    h.send("ann", say("lobby", "hi", cid="k3"))
    (event,) = h.tick()["ann"]
    assert event == {
        "type": "message", "room": "lobby", "seq": 1, "from": "ann", "from_id": "ann",
        "text": "hi", "ts": 1_795_855_995_535, "cid": "k3",
    }


# ----------------------------------------------------------------------------
# History and resume
# ----------------------------------------------------------------------------


def chat_with_history(n: int, **settings: Any) -> Harness:
    h = Harness(**settings)
    h.connect("ann")
    for i in range(1, n + 1):
        h.send("ann", f"m{i}")
    h.tick()
    return h


def test_resume_replays_exactly_the_missed_messages_in_order() -> None:
    h = chat_with_history(10)
    events = h.connect("bob", since=6, epoch="e1")
    assert types(events) == ["welcome", "presence", "message", "message", "message", "message"]
    assert events[1]["seq"] == 10
    assert message_seqs(events) == [7, 8, 9, 10]
    assert [e["text"] for e in events[2:]] == ["m7", "m8", "m9", "m10"]


def test_resume_when_nothing_was_missed_replays_nothing() -> None:
    h = chat_with_history(3)
    assert types(h.connect("bob", since=3, epoch="e1")) == ["welcome", "presence"]


def test_join_command_with_since_replays_after_the_snapshot() -> None:
    h = chat_with_history(5)
    h.connect("bob", room=None)
    h.send("bob", join("lobby", since=2))
    got = h.tick()["bob"]
    assert types(got)[:1] == ["presence"]
    assert message_seqs(got) == [3, 4, 5]


def test_a_gap_older_than_history_is_announced_with_where_history_starts() -> None:
    h = chat_with_history(10, history=4)
    events = h.connect("bob", since=2, epoch="e1")
    assert events[2] == {"type": "gap", "room": "lobby", "since": 2, "first": 7}
    assert message_seqs(events) == [7, 8, 9, 10]


def test_history_bytes_bound_what_is_kept() -> None:
    h = Harness(history_bytes=64 * 1024)
    h.connect("ann")
    for _ in range(40):
        h.send("ann", "x" * 4000)
    h.tick()
    room = h.chat.rooms["lobby"]
    assert room.history.bytes <= 64 * 1024
    assert 10 <= len(room.history) < 40
    events = h.connect("bob", since=0, epoch="e1")
    assert events[2]["type"] == "gap" and events[2]["first"] == room.first_seq


def test_since_from_another_epoch_is_a_reset_with_the_whole_history() -> None:
    h = chat_with_history(3)
    events = h.connect("bob", since=50, epoch="old")
    assert events[2] == {"type": "gap", "room": "lobby", "since": 50, "first": 1, "reset": True}
    assert message_seqs(events) == [1, 2, 3]


def test_since_ahead_of_the_room_is_a_reset_even_without_epoch() -> None:
    h = chat_with_history(3)
    events = h.connect("bob", since=7)
    assert events[2]["reset"] is True
    assert message_seqs(events) == [1, 2, 3]


def test_reset_into_an_empty_new_room_says_so() -> None:
    h = Harness()
    events = h.connect("ann", since=9, epoch="gone")
    assert events[2] == {"type": "gap", "room": "lobby", "since": 9, "first": 1, "reset": True}


def test_history_zero_keeps_nothing_and_says_so() -> None:
    h = chat_with_history(3, history=0)
    events = h.connect("bob", since=1, epoch="e1")
    assert events[2] == {"type": "gap", "room": "lobby", "since": 1, "first": 4}
    assert message_seqs(events) == []


def test_history_counts_the_bytes_it_holds() -> None:
    h = Harness()
    h.connect("ann")
    h.send("ann", "\U0001f600" * 1000)
    h.tick()
    room = h.chat.rooms["lobby"]
    (_, data), = room.history
    assert isinstance(data, bytes) and room.history.bytes == len(data) > 4000


def test_a_global_budget_forgets_idle_rooms_first_then_trims_the_writer() -> None:
    big = "x" * 4000
    h = Harness(history_bytes=64 * 1024, history_total_bytes=150 * 1024)
    h.connect("ann", room=None)
    for room in ("old", "newer"):
        h.send("ann", join(room))
        for _ in range(15):
            h.send("ann", say(room, big))
        h.send("ann", {"type": "leave", "room": room})
    h.tick()
    assert set(h.chat.rooms) == {"old", "newer"}
    h.send("ann", join("busy"))
    for _ in range(40):
        h.send("ann", say("busy", big))
    h.tick()
    assert "old" not in h.chat.rooms  # forgotten first, oldest first
    assert "newer" in h.chat.rooms
    total = sum(room.history.bytes for room in h.chat.rooms.values())
    assert total <= 150 * 1024
    assert h.chat.rooms["busy"].history  # the writer keeps what fits


def test_replays_in_one_tick_are_bounded() -> None:
    h = chat_with_history(250, history_bytes=64 * 1024)
    for _ in range(200):
        h.send("ann", "y" * 400)
    h.tick()
    history = h.chat.rooms["lobby"].history.bytes
    h.connect("bob", room=None)
    for _ in range(50):
        h.send("bob", join("lobby", since=0))
        h.send("bob", {"type": "leave", "room": "lobby"})
    got = h.tick()["bob"]
    size = len(json.dumps(got))
    assert size <= 2 * history + 50_000
    assert any(e.get("error") == "replay_limited" for e in got)
    # The next tick has a fresh budget.
    h.send("bob", join("lobby", since=0))
    assert "replay_limited" not in json.dumps(h.tick()["bob"])


def test_an_epoch_of_any_length_forces_a_reset_when_it_does_not_match() -> None:
    h = chat_with_history(5)
    events = h.connect("bob", since=2, epoch="e" * 40)
    assert events[2]["type"] == "gap" and events[2]["reset"] is True
    assert message_seqs(events) == [1, 2, 3, 4, 5]


def test_the_app_times_intervals_on_a_monotonic_clock() -> None:
    chat = ChatApp().chat
    assert chat.clock is time.time  # message timestamps
    assert chat.timer is time.monotonic  # count interval, room TTL


# ----------------------------------------------------------------------------
# Presence degrades to counts in large rooms
# ----------------------------------------------------------------------------


def test_large_rooms_get_counts_not_member_lists() -> None:
    h = Harness(presence_limit=3, count_interval=1.0)
    for peer in ("a", "b", "c"):
        h.connect(peer)
    h.tick()
    events = h.connect("d")
    assert events[1] == {"type": "presence", "room": "lobby", "epoch": "e1", "seq": 0,
                         "count": 4}
    got = h.tick()
    # The others switch to counting at once, without a join event.
    assert got == {p: [{"type": "presence", "room": "lobby", "count": 4}] for p in "abc"}
    # Joins and leaves in a counting room cost no events until the interval...
    h.connect("e")
    h.drop("a")
    h.connect("f")
    assert h.tick() == {}
    # ...then one count for everyone.
    h.clock.now += 1.0
    got = h.tick()
    assert set(got) == {"b", "c", "d", "e", "f"}
    assert got["b"] == [{"type": "presence", "room": "lobby", "count": 5}]
    # Nick in a counting room: only the ack.
    h.send("b", {"type": "nick", "name": "bee"})
    assert h.tick() == {"b": [{"type": "nick", "id": "b", "name": "bee", "old": "b"}]}


def test_a_room_back_under_the_limit_gets_its_member_list_again() -> None:
    h = Harness(presence_limit=2, count_interval=1.0)
    for peer in ("a", "b", "c"):
        h.connect(peer)
    h.tick()
    h.drop("c")
    h.clock.now += 1.0
    got = h.tick()
    assert got["a"] == [{"type": "presence", "room": "lobby", "count": 2,
                         "members": [{"id": "a", "name": "a"}, {"id": "b", "name": "b"}]}]
    h.connect("x")  # over again
    h.drop("x")  # and back; join/leave events resume below the limit
    h.clock.now += 1.0
    h.tick()
    h.connect("y")
    assert h.tick()["a"][-1]["type"] in ("join", "presence")


def test_rooms_crossing_the_limit_do_not_delay_another_rooms_count() -> None:
    h = Harness(presence_limit=1, count_interval=1.0)
    for peer in "abc":
        h.connect(peer, room="big")
    h.tick()
    h.drop("c")
    got: list[Event] = []
    for i in range(40):  # 2 s of ticks, a fresh room crossing the limit in each
        h.clock.now += 0.05
        h.connect(f"x{i}", room=f"fresh{i}")
        h.connect(f"y{i}", room=f"fresh{i}")
        got += h.tick().get("a", [])
    assert {"type": "presence", "room": "big", "count": 2} in got


_NAMES = st.text(st.sampled_from('ab"\\\u00e9\u4e2d \u0301<'), min_size=1, max_size=8)


@given(st.lists(_NAMES, max_size=6), st.dictionaries(st.text(max_size=4), _NAMES, max_size=3),
       st.booleans(), st.booleans())
def test_the_encoded_snapshot_is_the_snapshot_event(
    names: list[str], remote: dict[str, str], counting: bool, numbering: bool,
) -> None:
    """The join reply, built from each member's cached entry, says what
    ``snapshot_event`` says."""
    room = Room('r"1', 0, "e1", Ledger(10, 1 << 20, 1 << 20))
    room.seq, room.counting, room.remote = 7, counting, dict(remote)
    for i, name in enumerate(names):
        room.members[Member(None, f"m{i}", name, False)] = None
    assert json.loads(encoded_snapshot(room, numbering)) == snapshot_event(room, numbering)


def test_a_joiner_sees_a_renamed_member_by_its_new_name() -> None:
    h = Harness()
    h.connect("a")
    h.send("a", {"type": "nick", "name": "ann"})
    h.tick()
    snapshot = h.connect("b")[1]
    assert snapshot["members"] == [{"id": "a", "name": "ann"}, {"id": "b", "name": "b"}]


def test_a_very_large_room_hears_its_count_less_often() -> None:
    """At most ``count_frames`` count frames a second (one per member): at 4 a
    second, 8 members hear a changed count every 2 s, 9 every 2.25 s."""
    h = Harness(presence_limit=2, count_interval=1.0, count_frames=4)
    for i in range(8):
        h.connect(f"p{i}")
    h.tick()  # counting since the third join
    h.clock.now += 1.0
    assert h.tick()["p0"] == [{"type": "presence", "room": "lobby", "count": 8}]

    def count_after(seconds: float) -> list[Event]:
        h.clock.now += seconds
        return h.tick().get("p0", [])

    h.connect("q")
    assert count_after(1.0) == []  # 8 members: 2 s between counts
    assert count_after(1.0) == [{"type": "presence", "room": "lobby", "count": 9}]
    h.connect("r")
    assert count_after(1.0) == []
    assert count_after(1.0) == []  # 9 members: 2.25 s
    assert count_after(0.25) == [{"type": "presence", "room": "lobby", "count": 10}]


def test_presence_cost_is_linear_in_a_big_room() -> None:
    """Every join reply in a big room is a count: total presence bytes grow
    linearly with members, not quadratically."""
    h = Harness(presence_limit=100)
    total = 0
    for i in range(2000):
        total += len(json.dumps(h.connect(f"p{i}")))
    h.tick()
    assert total < 2000 * 400  # a member list of 2,000 would be ~50 KB per reply


# ----------------------------------------------------------------------------
# Rooms are freed: no leak after many joins and leaves
# ----------------------------------------------------------------------------


def test_empty_rooms_without_history_are_freed_at_once() -> None:
    h = Harness()
    h.connect("ann", room=None)
    for i in range(5000):
        h.send("ann", join(f"r{i}"))
        h.send("ann", {"type": "leave", "room": f"r{i}"})
        if i % 100 == 0:
            h.tick()
    h.tick()
    assert h.chat.rooms == {}
    assert h.chat.stats() == {"rooms": 0, "idle_rooms": 0, "history_messages": 0}
    member = h.members["ann"]
    assert member.rooms == {} and member.personal is None and member.skip is None


def test_rooms_with_history_are_kept_for_the_ttl_then_freed() -> None:
    h = Harness(room_ttl=60.0)
    h.connect("ann", room="dev")
    h.send("ann", "hi")
    h.tick()
    h.drop("ann")
    h.tick()
    assert h.chat.stats()["idle_rooms"] == 1
    # Coming back within the TTL resumes the same epoch.
    h.clock.now += 59
    events = h.connect("ann2", room="dev", since=0, epoch="e1")
    assert message_seqs(events, "dev") == [1]
    h.drop("ann2")
    h.clock.now += 61
    h.tick()
    assert h.chat.rooms == {}
    # After that the room is new: its epoch changed, so a resume is a reset.
    events = h.connect("ann3", room="dev", since=1, epoch="e1")
    assert events[1]["epoch"] != "e1" and events[2]["reset"] is True


def test_idle_rooms_are_capped_oldest_first() -> None:
    h = Harness(max_idle_rooms=10)
    h.connect("ann", room=None)
    for i in range(100):
        h.send("ann", join(f"r{i}"))
        h.send("ann", say(f"r{i}", "x"))
        h.send("ann", {"type": "leave", "room": f"r{i}"})
    h.tick()
    assert sorted(h.chat.rooms, key=lambda r: int(r[1:])) == [f"r{i}" for i in range(90, 100)]


def test_disconnects_leave_no_state_behind() -> None:
    h = Harness()
    for round_ in range(50):
        for i in range(20):
            peer = f"p{round_}-{i}"
            h.connect(peer, room=f"room{i % 3}")
            h.send(peer, join("shared"))
            h.send(peer, "hi")
        for i in range(20):
            h.drop(f"p{round_}-{i}")
        h.tick()
    assert h.chat.stats()["rooms"] == 0
    assert h.chat._batch.touched == set() and h.chat._batch.active == []
    assert h.chat._presence._counts == set()


@pytest.mark.parametrize(
    ("field", "value"),
    [("history", -1), ("max_rooms_per_client", 0), ("presence_limit", -1),
     ("history_bytes", 1000), ("history_bytes", 1 << 30), ("count_interval", 0),
     ("count_frames", 0), ("presence_storm_total_frames", -1), ("room_ttl", -1),
     ("max_idle_rooms", -1)],
)
def test_settings_refuse_nonsense(field: str, value: float) -> None:
    fields: dict[str, Any] = {field: value}
    with pytest.raises(ValueError):
        ChatSettings(**fields)


# ----------------------------------------------------------------------------
# Presence storms: one diff per interval instead of an event per change
# ----------------------------------------------------------------------------


def presence_kinds(events: list[Event]) -> list[str]:
    return [e["type"] for e in events if e["type"] in ("join", "leave", "nick", "presence_diff")]


def storm_harness() -> Harness:
    # Single events cost a frame per member: c, d and e joining cost 3 + 4 + 5
    # = 12 frames, within 13; f's 6 more start the storm.
    h = Harness(presence_storm_frames=13, presence_diff_interval=1.5)
    h.connect("a")
    h.connect("b")
    h.clock.now += 2.0  # a quiet second: the storm window starts afresh
    h.tick()
    return h


def test_a_quiet_room_hears_each_join_and_leave_on_its_own() -> None:
    h = storm_harness()
    h.connect("c")
    h.drop("c")
    assert presence_kinds(h.tick()["a"]) == ["join", "leave"]


def test_a_burst_of_joins_becomes_one_diff_after_the_interval() -> None:
    h = storm_harness()
    for peer in ("c", "d", "e", "f", "g"):  # 5 joins in one second, storm at the 4th
        h.connect(peer)
    got = h.tick()
    assert presence_kinds(got["a"]) == ["join", "join", "join"]  # c, d, e: below the storm
    h.clock.now += 1.0
    assert "a" not in h.tick()  # the diff waits for its interval
    h.clock.now += 0.5
    got = h.tick()
    assert got["a"] == [{"type": "presence_diff", "room": "lobby", "count": 7,
                         "joined": [{"id": "f", "name": "f"}, {"id": "g", "name": "g"}],
                         "left": []}]
    # The storm ended (f and g, 6 + 7 frames in the interval): single events again.
    h.connect("h")
    assert presence_kinds(h.tick()["a"]) == ["join"]


def test_a_member_that_joins_and_leaves_within_a_diff_is_in_neither_list() -> None:
    h = storm_harness()
    for peer in ("c", "d", "e"):
        h.connect(peer)
    h.tick()
    h.connect("x")  # the storm starts here
    h.drop("a")  # known before the diff: it is in "left"
    h.drop("x")  # joined within it: nobody needs to hear of it
    h.send("b", {"type": "nick", "name": "bee"})
    h.clock.now += 1.5
    diff = [e for e in h.tick()["c"] if e["type"] == "presence_diff"]
    assert diff == [{"type": "presence_diff", "room": "lobby", "count": 4,
                     "joined": [{"id": "b", "name": "bee"}], "left": ["a"]}]


def test_a_member_that_leaves_comes_back_and_leaves_again_is_reported_left() -> None:
    h = storm_harness()
    for peer in ("c", "d", "e", "f"):
        h.connect(peer)  # f starts the storm
    h.tick()
    h.send("c", {"type": "leave", "room": "lobby"})
    h.send("c", {"type": "join", "room": "lobby"})
    h.send("c", {"type": "leave", "room": "lobby"})
    h.clock.now += 1.5
    diff = next(e for e in h.tick()["a"] if e["type"] == "presence_diff")
    assert "c" in diff["left"] and all(j["id"] != "c" for j in diff["joined"])


def test_a_storm_that_goes_on_sends_a_diff_every_interval() -> None:
    h = storm_harness()
    diffs = 0
    for i in range(60):  # 6 s at 10 joins per second
        h.clock.now += 0.1
        h.connect(f"p{i}")
        diffs += sum(e["type"] == "presence_diff" for e in h.tick().get("a", []))
    assert 3 <= diffs <= 4  # every 1.5 s, not 57 single joins
    h.clock.now += 1.5
    last = next(e for e in h.tick()["a"] if e["type"] == "presence_diff")
    assert last["count"] == 62


def test_presence_storm_frames_zero_turns_diffs_off() -> None:
    h = Harness(presence_storm_frames=0)
    for i in range(30):
        h.connect(f"p{i}")
    h.tick()
    h.connect("late")
    assert presence_kinds(h.tick()["p0"]) == ["join"]


def test_many_quiet_rooms_together_become_a_storm() -> None:
    # Each room's joins stay under its own limit (13 frames a second), but
    # all rooms together pass the worker's (15): later changes become diffs.
    h = Harness(presence_storm_frames=13, presence_storm_total_frames=15,
                presence_diff_interval=1.5)
    for room in ("r1", "r2", "r3", "r4"):
        h.connect(f"{room}a", room=room)
        h.connect(f"{room}b", room=room)
    h.clock.now += 2.0  # a quiet second: both windows start afresh
    h.tick()
    for room in ("r1", "r2", "r3", "r4"):
        h.connect(f"{room}c", room=room)  # 3 frames per room: 12 in all
    h.connect("r1d", room="r1")  # r1's 4 more (7, under 13) pass the 15
    got = h.tick()
    assert presence_kinds(got["r4a"]) == ["join"]
    assert presence_kinds(got["r1a"]) == ["join"]  # c on its own; d waits for the diff
    h.clock.now += 1.5
    diff = [e for e in h.tick()["r1a"] if e["type"] == "presence_diff"]
    assert diff == [{"type": "presence_diff", "room": "r1", "count": 4,
                     "joined": [{"id": "r1d", "name": "r1d"}], "left": []}]


def test_a_busy_worker_spaces_its_diffs_to_stay_within_the_total() -> None:
    # Two rooms of 15 or more: a diff to both is 30 frames or more, so within
    # the worker's 10 a second each room may hear one every 3 s, not 1.5 s.
    h = Harness(presence_storm_frames=1000, presence_storm_total_frames=10,
                presence_diff_interval=1.5)
    for room in ("r1", "r2"):
        for i in range(15):
            h.connect(f"{room}-{i}", room=room)
    for _ in range(3):  # the connects' own storm ends
        h.clock.now += 5.0
        h.tick()
    diffs: list[tuple[float, Event]] = []
    for step in range(100):  # 10 s with a join into each room every second
        h.clock.now += 0.1
        if step % 10 == 0:
            h.connect(f"r1-new{step}", room="r1")
            h.connect(f"r2-new{step}", room="r2")
        diffs += [(h.clock.now, e) for e in h.tick().get("r1-0", [])
                  if e["type"] == "presence_diff"]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(diffs)]
    assert len(gaps) >= 2 and min(gaps) >= 3.0
    h.clock.now += 10.0  # the storm is over: r1 has heard of every join
    diffs += [(h.clock.now, e) for e in h.tick().get("r1-0", [])
              if e["type"] == "presence_diff"]
    assert diffs[-1][1]["count"] == 25


def test_a_quiet_worker_keeps_single_events_below_the_total() -> None:
    h = Harness(presence_storm_frames=13, presence_storm_total_frames=1000,
                presence_diff_interval=1.5)
    for room in ("r1", "r2", "r3", "r4"):
        for peer in "abc":
            h.connect(f"{room}{peer}", room=room)  # 1 + 2 + 3 frames per room
    h.clock.now += 2.0
    h.tick()
    for room in ("r1", "r2", "r3", "r4"):
        h.connect(f"{room}d", room=room)  # 4 frames each, 16 in all: under both
    assert all(presence_kinds(got) == ["join"] for peer, got in h.tick().items()
               if peer.endswith("a"))
