"""Rooms that span nodes, without sockets: two ``Chat`` nodes share a fake
backplane (``fake_backplane.Hub``) that answers late, as Redis does."""

from __future__ import annotations

import json
from typing import Any

from support.clock import FakeClock
from support.fake_backplane import FakeBackplane, Hub

from wsnet.chat.loading import CATCH_UP_WAIT
from wsnet.chat.rooms import Chat, ChatSettings, Member

Event = dict[str, Any]


class Cluster:
    def __init__(self, history: int = 1000, nodes: int = 2) -> None:
        self.hub = Hub(history)
        self.backplanes = [FakeBackplane(self.hub, f"n{i}") for i in range(nodes)]
        settings = ChatSettings(history=history)
        self.clock = FakeClock(1000.0)
        self.nodes: list[Chat[str]] = [
            Chat(settings, clock=self.clock, backplane=b) for b in self.backplanes
        ]
        self.members: dict[str, tuple[Chat[str], Member[str]]] = {}
        self.got: dict[str, list[Event]] = {}

    def connect(self, peer: str, node: int, room: str = "lobby", **kw: Any) -> None:
        chat = self.nodes[node]
        member, welcome = chat.connect(peer, f"{node}-{peer}", peer, room=room, **kw)
        self.members[peer] = (chat, member)
        self.got[peer] = json.loads(welcome)

    def send(self, peer: str, command: str | Event) -> None:
        chat, member = self.members[peer]
        chat.receive(member, command if isinstance(command, str) else json.dumps(command))

    def tick(self) -> None:
        self.hub.pump()
        for chat in self.nodes:
            for peers, frame in chat.flush():
                for peer in peers:
                    self.got[peer].extend(json.loads(frame))

    def seqs(self, peer: str, room: str = "lobby") -> list[int]:
        return [e["seq"] for e in self.got[peer] if e["type"] == "message" and e["room"] == room]

    def events(self, peer: str, kind: str) -> list[Event]:
        return [e for e in self.got[peer] if e["type"] == kind]


def test_a_join_waits_for_the_room_to_load_then_answers_with_everything() -> None:
    c = Cluster()
    c.connect("ann", 0)
    assert [e["type"] for e in c.got["ann"]] == ["welcome"]  # the room is loading
    c.tick()
    (presence,) = c.events("ann", "presence")
    assert presence["epoch"] == "h1" and presence["seq"] == 0
    c.send("ann", "one")
    c.send("ann", "two")
    c.tick()
    c.connect("bob", 1, since=0)
    c.tick()
    assert c.seqs("bob") == [1, 2] and c.seqs("ann") == [1, 2]
    members = c.events("bob", "presence")[0]["members"]
    assert {m["name"] for m in members} == {"ann", "bob"}
    assert c.events("ann", "join")[0]["name"] == "bob"  # across nodes


def test_both_nodes_see_one_order() -> None:
    c = Cluster()
    c.connect("ann", 0)
    c.connect("bob", 1)
    c.tick()
    for i in range(10):
        c.send("ann" if i % 2 else "bob", f"m{i}")
    c.tick()
    texts = {p: [e["text"] for e in c.got[p] if e["type"] == "message"] for p in ("ann", "bob")}
    assert texts["ann"] == texts["bob"] and len(texts["ann"]) == 10
    assert c.seqs("ann") == c.seqs("bob") == list(range(1, 11))


def test_a_node_that_missed_messages_catches_up_or_says_where_history_starts() -> None:
    c = Cluster(history=4)
    c.connect("ann", 0)
    c.connect("bob", 1)
    c.tick()
    c.backplanes[1].detach()
    c.send("ann", "a")
    c.send("ann", "b")
    c.tick()
    c.backplanes[1].attach_again()
    c.tick()
    assert c.seqs("bob") == [1, 2]  # caught up, in order
    c.backplanes[1].detach()
    for i in range(10):
        c.send("ann", f"x{i}")
    c.tick()
    c.backplanes[1].attach_again()
    c.tick()
    (gap,) = c.events("bob", "gap")
    assert gap == {"type": "gap", "room": "lobby", "since": 2, "first": 9}
    assert c.seqs("bob") == [1, 2, 9, 10, 11, 12]


def _behind(c: Cluster) -> str:
    """ann on node 0 and bob on node 1 saw seq 1; node 1 then misses 2..5."""
    c.connect("ann", 0)
    c.connect("bob", 1)
    c.tick()
    c.send("ann", {"type": "message", "text": "first"})
    c.tick()
    c.backplanes[1].detach()
    for i in range(4):
        c.send("ann", {"type": "message", "text": f"while-{i}"})
    c.tick()
    assert c.seqs("ann") == [1, 2, 3, 4, 5] and c.seqs("bob") == [1]
    return str(c.events("ann", "presence")[0]["epoch"])


def test_a_resume_on_a_node_that_is_behind_waits_for_it_and_repeats_nothing() -> None:
    c = Cluster()
    epoch = _behind(c)
    c.connect("cy", 1, since=5, epoch=epoch)  # saw 5 on node 0; back on node 1
    c.tick()
    assert [e["type"] for e in c.got["cy"]] == ["welcome"]  # no reset: it waits
    c.backplanes[1].attach_again()
    c.tick()
    (presence,) = c.events("cy", "presence")
    assert (presence["epoch"], presence["seq"]) == (epoch, 5)
    assert c.events("cy", "gap") == [] and c.seqs("cy") == []
    c.send("ann", {"type": "message", "text": "live"})
    c.tick()
    assert c.seqs("cy") == [6]
    assert c.seqs("bob") == [1, 2, 3, 4, 5, 6]  # caught up, each once


def test_a_resume_that_the_node_cannot_catch_up_with_is_refused_in_time() -> None:
    c = Cluster()
    epoch = _behind(c)
    c.connect("cy", 1, since=5, epoch=epoch)
    c.tick()
    c.clock.advance(CATCH_UP_WAIT)
    c.tick()
    [error] = c.events("cy", "error")
    assert (error["error"], error["room"]) == ("unavailable", "lobby")
    assert c.events("cy", "presence") == [] and c.events("cy", "gap") == []
    assert not c.members["cy"][1].joining


def test_a_resume_waiting_for_an_epoch_that_is_gone_gets_the_reset() -> None:
    c = Cluster()
    epoch = _behind(c)
    c.connect("cy", 1, since=5, epoch=epoch)
    c.tick()
    c.hub.restart(c.backplanes[:1])  # everything lost while node 1 was away
    c.backplanes[1].attach_again()  # its reload finds a new epoch
    c.tick()
    (presence,) = [e for e in c.events("cy", "presence") if "epoch" in e]
    assert presence["epoch"] != epoch
    [gap] = c.events("cy", "gap")
    assert gap["reset"] is True


def test_messages_while_detached_are_refused_not_dropped() -> None:
    c = Cluster()
    c.connect("ann", 0)
    c.tick()
    c.backplanes[0].detach()
    c.send("ann", {"type": "message", "text": "lost?", "cid": "k1"})
    c.send("ann", {"type": "join", "room": "other"})
    c.tick()
    errors = [(e["error"], e.get("room"), e.get("cid")) for e in c.events("ann", "error")]
    assert errors == [("unavailable", "lobby", "k1"), ("unavailable", "other", None)]
    assert not c.members["ann"][1].joining


def test_a_backplane_that_lost_everything_resets_the_rooms() -> None:
    c = Cluster()
    c.connect("ann", 0)
    c.connect("bob", 1)
    c.tick()
    c.send("ann", "before")
    c.tick()
    c.hub.restart(c.backplanes)
    c.tick()
    for peer in ("ann", "bob"):
        gap = c.events(peer, "gap")[0]
        assert gap["reset"] is True and gap["since"] == 1
        presence = c.events(peer, "presence")[-1]
        assert presence["epoch"] != "h1" and presence["seq"] == 0
        kinds = [e["type"] for e in c.got[peer]]
        last_presence = len(kinds) - 1 - kinds[::-1].index("presence")
        assert kinds[last_presence + 1] == "gap"  # the new epoch first, then the reset
    c.send("bob", "after")
    c.tick()
    assert c.seqs("ann") == [1, 1]  # numbering restarted, announced by the gap
    # Presence survived: each node registered its members again.
    state = c.hub.rooms["lobby"]
    assert set(state.members) == {"n0|0-ann", "n1|1-bob"}


def test_a_node_that_reloads_late_delivers_what_the_new_epoch_already_has() -> None:
    c = Cluster()
    c.connect("ann", 0)
    c.connect("bob", 1)
    c.tick()
    c.send("ann", "old")
    c.tick()
    c.backplanes[1].detach()
    c.hub.restart(c.backplanes[:1])  # node 0 is back at once, node 1 later
    c.send("ann", "new 1")
    c.send("ann", "new 2")
    c.tick()
    c.backplanes[1].attach_again()
    c.tick()
    tail = c.got["bob"][-4:]
    assert [e["type"] for e in tail] == ["presence", "gap", "message", "message"]
    assert [e["text"] for e in tail[2:]] == ["new 1", "new 2"]
    assert tail[0]["seq"] == 2 and tail[1]["first"] == 1


def test_leaving_while_the_room_loads_cancels_the_join() -> None:
    c = Cluster()
    c.connect("ann", 0, room="lobby")
    c.send("ann", {"type": "leave", "room": "lobby"})
    c.tick()
    assert [e["type"] for e in c.got["ann"]] == ["welcome", "leave"]
    assert "lobby" not in c.nodes[0].rooms or not c.nodes[0].rooms["lobby"].members
