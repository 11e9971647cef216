"""A hypothesis state machine drives ``wsnet.chat.rooms.Chat``: users connect,
join, leave, send, drop and come back with ``since``; time passes and empty
rooms are forgotten.

The invariant: every user receives every message of its rooms exactly once, in
``seq`` order, for the time it was joined plus what it resumed; a jump in
``seq`` is always explained by a ``gap`` event; and nobody gets two frames in
one tick.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from support.fake_backplane import FakeBackplane, Hub

from wsnet.chat.rooms import Chat, ChatSettings, Member

USERS = ["ann", "bob", "cy", "dee"]
ROOMS = ["lobby", "dev", "ops"]
HISTORY = 4  # small, so that long absences overflow it and gaps happen


@dataclass
class RoomView:
    """What one user knows about one room, from the events it received."""

    epoch: str | None = None
    last: int | None = None  # the last seq it has (None: not positioned yet)
    joined: bool = False
    #: The since of each join in flight (None: a join without since), in order.
    resuming: list[int | None] = field(default_factory=list)
    left_at: list[int] = field(default_factory=list)  # room seq at each leave sent
    #: A resume asked (before the tick delivered them) for messages it then got:
    #: their replay up to here is what it asked for, not a duplicate.
    asked_again: int = 0


@dataclass
class User:
    name: str
    member: Member[str] | None = None
    node: int = 0
    generation: int = 0
    views: dict[str, RoomView] = field(default_factory=dict)
    messages: dict[str, list[int]] = field(default_factory=dict)

    @property
    def peer(self) -> str:
        return f"{self.name}#{self.generation}"

    def view(self, room: str) -> RoomView:
        return self.views.setdefault(room, RoomView())


SETTINGS = ChatSettings(history=HISTORY, presence_limit=2, room_ttl=30.0, count_interval=1.0)


class ChatMachine(RuleBasedStateMachine):
    """One process: the chat numbers messages and keeps history itself."""

    hub: Hub | None = None

    @initialize()
    def start(self) -> None:
        self.now = 1000.0
        self.nodes: list[Chat[str]] = [Chat(SETTINGS, clock=lambda: self.now)]
        self.users = {name: User(name) for name in USERS}
        self.by_peer: dict[str, User] = {}
        self.texts = 0

    # -- what a user sees ----------------------------------------------------

    def deliver(self, user: User, events: list[dict[str, Any]]) -> None:
        for event in events:
            kind, room = event["type"], event.get("room")
            if room is None:
                continue
            view = user.view(room)
            if kind == "presence" and "epoch" in event and view.joined:
                # The backplane lost the room: a new epoch, then a reset gap and
                # what the new epoch holds, as in a join answer.
                assert event["epoch"] != view.epoch, (user.peer, event)
                view.epoch, view.last = event["epoch"], None
            elif kind == "presence" and "epoch" in event:  # a join reply
                view.joined = True
                since = view.resuming.pop(0)
                if since is not None and event["epoch"] == view.epoch:
                    view.asked_again = view.last or 0
                    view.last = since
                else:
                    view.last = event["seq"] if since is None else None
                if event["epoch"] != view.epoch:
                    # A room forgotten and made again (its TTL passed): a new
                    # numbering, announced by the epoch, may start at 1 again.
                    user.messages[room] = []
                view.epoch = event["epoch"]
            elif kind == "gap":
                assert view.joined
                if event.get("reset"):
                    user.messages[room] = []  # a new numbering starts
                else:
                    assert event["since"] == view.last, (user.peer, event, view)
                view.last = event["first"] - 1
            elif kind == "message":
                assert view.joined, f"{user.peer} got {room} while not in it"
                if view.last is None:  # resumed into a new epoch without a gap?
                    raise AssertionError(f"{user.peer}: message before position in {room}")
                assert event["seq"] == view.last + 1, (user.peer, event, view)
                view.last = event["seq"]
                if event["seq"] > view.asked_again:
                    user.messages.setdefault(room, []).append(event["seq"])
            elif kind == "join":
                assert event["id"] != user.peer, "its own join is answered by presence"
                assert view.joined
            elif kind == "leave" and event["id"] == user.peer:
                # It had everything up to the moment it left.
                assert view.last == view.left_at.pop(0), (user.peer, event, view)
                view.joined = False

    # -- rules ---------------------------------------------------------------

    @rule(name=st.sampled_from(USERS), room=st.sampled_from([*ROOMS, None]),
          node=st.integers(0, 1))
    def connect(self, name: str, room: str | None, node: int) -> None:
        user = self.users[name]
        if user.member is not None:
            return
        user.node = node % len(self.nodes)
        user.generation += 1
        since = epoch = None
        if room is not None:
            view = user.view(room)
            if view.last is not None:  # come back where we were
                since, epoch = view.last, view.epoch
            view.resuming.append(since)
        member, welcome = self.nodes[user.node].connect(
            user.peer, user.peer, name, room=room, since=since, epoch=epoch,
        )
        user.member = member
        self.by_peer[user.peer] = user
        self.deliver(user, json.loads(welcome))

    @rule(name=st.sampled_from(USERS), room=st.sampled_from(ROOMS), resume=st.booleans())
    def join(self, name: str, room: str, resume: bool) -> None:
        user = self.users[name]
        if user.member is None or room in user.member.rooms or room in (user.member.joining or {}):
            return
        view = user.view(room)
        command: dict[str, Any] = {"type": "join", "room": room}
        if resume and view.last is not None:
            command.update(since=view.last, epoch=view.epoch)
            view.resuming.append(view.last)
        else:
            view.resuming.append(None)
        self.nodes[user.node].receive(user.member, json.dumps(command))

    @rule(name=st.sampled_from(USERS), room=st.sampled_from(ROOMS))
    def leave(self, name: str, room: str) -> None:
        user = self.users[name]
        if user.member is None or room not in user.member.rooms:
            return
        chat = self.nodes[user.node]
        user.view(room).left_at.append(chat.rooms[room].seq)
        chat.receive(user.member, json.dumps({"type": "leave", "room": room}))

    @rule(name=st.sampled_from(USERS), room=st.sampled_from(ROOMS), count=st.integers(1, 3))
    def send(self, name: str, room: str, count: int) -> None:
        user = self.users[name]
        if user.member is None or room not in user.member.rooms:
            return
        for _ in range(count):
            self.texts += 1
            command = {"type": "message", "room": room, "text": f"t{self.texts}"}
            self.nodes[user.node].receive(user.member, json.dumps(command))

    @rule(name=st.sampled_from(USERS))
    def drop(self, name: str) -> None:
        user = self.users[name]
        if user.member is None:
            return
        self.nodes[user.node].disconnect(user.member)
        user.member = None
        for view in user.views.values():
            view.joined = False
            view.resuming.clear()
            view.left_at.clear()

    @rule(seconds=st.sampled_from([0.05, 1.0, 40.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        if self.hub is not None:
            self.hub.pump()
        seen: set[str] = set()
        frames = [item for chat in self.nodes for item in chat.flush()]
        for peers, frame in frames:
            events = json.loads(frame)
            for peer in peers:
                assert peer not in seen, f"{peer} got two frames in one tick"
                seen.add(peer)
                user = self.by_peer[peer]
                assert user.member is not None and user.peer == peer, "frame for a dropped peer"
                self.deliver(user, events)
        self.check_caught_up()

    # -- invariants ----------------------------------------------------------

    def cut_off(self, node: int) -> bool:
        return False

    def check_caught_up(self) -> None:
        """After a tick, every member has its rooms' every message, and every
        join it asked for was answered."""
        for user in self.users.values():
            if user.member is None or self.cut_off(user.node):
                continue
            assert not user.member.joining, (user.peer, user.member.joining)
            for name in user.member.rooms:
                view = user.view(name)
                room = self.nodes[user.node].rooms[name]
                assert view.joined and view.epoch == room.epoch
                assert view.last == room.seq, (user.peer, name, view, room.seq)

    @invariant()
    def history_is_bounded_and_contiguous(self) -> None:
        for room in (r for chat in self.nodes for r in chat.rooms.values()):
            seqs = [seq for seq, _ in room.history]
            assert len(seqs) <= HISTORY
            assert seqs == list(range(room.seq - len(seqs) + 1, room.seq + 1))

    @invariant()
    def received_messages_are_strictly_increasing(self) -> None:
        for user in self.users.values():
            for seqs in user.messages.values():
                # Rejoining without since skips what was missed, so jumps are
                # allowed here; each step of a stay is checked in deliver().
                assert all(b > a for a, b in pairwise(seqs)), seqs

    @invariant()
    def membership_agrees(self) -> None:
        for user in self.users.values():
            if user.member is None:
                continue
            for name, room in user.member.rooms.items():
                assert user.member in room.members
                assert self.nodes[user.node].rooms.get(name) is room
        for chat in self.nodes:
            for room in chat.rooms.values():
                assert room.multi == sum(len(m.rooms) > 1 for m in room.members)
                assert room.history.bytes == sum(len(data) for _, data in room.history)
            total = sum(room.history.bytes for room in chat.rooms.values())
            assert chat._table.ledger.total == total


class TwoNodeChatMachine(ChatMachine):
    """Two nodes sharing rooms through a backplane that answers late (as Redis
    does), which can also lose everything and make the nodes reload."""

    @initialize()
    def start(self) -> None:
        super().start()
        self.hub = Hub(HISTORY)
        self.backplanes = [FakeBackplane(self.hub, f"n{i}") for i in range(2)]
        self.nodes = [
            Chat(SETTINGS, clock=lambda: self.now, backplane=backplane)
            for backplane in self.backplanes
        ]

    @rule()
    def backplane_restart(self) -> None:
        assert self.hub is not None
        for backplane in self.backplanes:
            backplane.detached = False
        self.hub.restart(self.backplanes)

    @rule(node=st.integers(0, 1))
    def node_loses_its_links(self, node: int) -> None:
        self.backplanes[node].detach()

    @rule(node=st.integers(0, 1))
    def node_gets_them_back(self, node: int) -> None:
        if self.backplanes[node].detached:
            self.backplanes[node].attach_again()

    def cut_off(self, node: int) -> bool:
        return self.backplanes[node].detached

    @invariant()
    def nodes_agree_with_the_backplane(self) -> None:
        assert self.hub is not None
        if self.hub.queue:
            return
        for index, chat in enumerate(self.nodes):
            if self.cut_off(index):
                continue
            for name, room in chat.rooms.items():
                if not room.loading:
                    state = self.hub.rooms[name]
                    assert (room.epoch, room.seq) == (state.epoch, state.seq)


ChatMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TwoNodeChatMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None,
)
test_chat_state_machine = ChatMachine.TestCase
test_two_nodes_state_machine = TwoNodeChatMachine.TestCase
