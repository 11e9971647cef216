"""A stand-in for Redis and the Redis backplane, for sans-I/O tests of rooms that
span nodes: several ``Chat`` objects share one ``Hub``.

Like the real backplane, a node's requests (publish, open a room, presence) are
carried out later, in the order they were made, when the test calls
``Hub.pump()``; deliveries reach subscribed nodes in publish order. The hub can
lose everything (a Redis restart without persistence), after which nodes reload
their rooms, as the real one does on reconnection.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from wsnet.chat.backplane import RoomSink
from wsnet.chat.loop import Loop


@dataclass
class HubRoom:
    epoch: str
    seq: int = 0
    history: list[tuple[int, str]] = field(default_factory=list)
    members: dict[str, str] = field(default_factory=dict)  # "node|id" -> name
    subscribers: set[FakeBackplane] = field(default_factory=set)


class Hub:
    def __init__(self, history: int) -> None:
        self.history = history
        self.rooms: dict[str, HubRoom] = {}
        self.queue: list[Callable[[], None]] = []
        self.down = False
        self._epochs = (f"h{i}" for i in itertools.count(1))

    def room(self, name: str) -> HubRoom:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = HubRoom(next(self._epochs))
        return room

    def pump(self) -> None:
        while self.queue:
            self.queue.pop(0)()

    def restart(self, nodes: list[FakeBackplane]) -> None:
        """Everything is lost; every node re-registers and reloads its rooms."""
        self.pump()
        subscribers = {name: room.subscribers for name, room in self.rooms.items()}
        self.rooms.clear()
        for name, subs in subscribers.items():
            self.room(name).subscribers = subs
        for node in nodes:
            node.reconnected()
        self.pump()


class FakeBackplane:
    remote = True

    def __init__(self, hub: Hub, node: str) -> None:
        self.hub = hub
        self.node = node
        self.open: set[str] = set()
        self.detached = False  # its links are down: it hears and says nothing

    def attach(self, sink: RoomSink) -> None:
        self.sink = sink

    def start(self, loop: Loop) -> None:
        pass

    def stop(self) -> None:
        pass

    def status(self) -> dict[str, object]:
        return {"backplane": "fake"}

    def metrics(self) -> list[Any]:
        return []

    def publish(
        self, room: str, prefix: str, suffix: str, failed: Callable[[], None],
        *, key: str | None = None, duplicate: Callable[[str], None] | None = None,
        accepted: Callable[[int, str], None] | None = None,
    ) -> None:
        if self.detached:
            failed()
            return

        def run() -> None:
            state = self.hub.room(room)
            state.seq += 1
            event = f"{prefix}{state.seq}{suffix}"
            state.history = [*state.history, (state.seq, event)][-self.hub.history:]
            for node in list(state.subscribers):
                node.sink.deliver(room, state.seq, event)
            if accepted is not None:
                accepted(state.seq, state.epoch)

        self.hub.queue.append(run)

    def open_room(self, room: str) -> None:
        if self.detached:
            self.sink.room_failed(room)
            return
        self.open.add(room)

        def run() -> None:
            if room not in self.open:
                return
            self._load(room)

        self.hub.queue.append(run)

    def _load(self, room: str) -> None:
        state = self.hub.room(room)
        state.subscribers.add(self)
        mine = self.node + "|"
        remote = {
            f.partition("|")[2]: n for f, n in state.members.items() if not f.startswith(mine)
        }
        self.sink.room_loaded(room, state.epoch, state.seq, list(state.history), remote)

    def close_room(self, room: str) -> None:
        self.open.discard(room)
        if room in self.hub.rooms:
            self.hub.rooms[room].subscribers.discard(self)

    def presence(self, room: str, member_id: str, name: str | None, event: str) -> None:
        if self.detached:
            return  # registered again on reconnection

        def run() -> None:
            state = self.hub.room(room)
            key = f"{self.node}|{member_id}"
            if name is None:
                state.members.pop(key, None)
            else:
                state.members[key] = name
            if event:
                for node in list(state.subscribers):
                    if node is not self:
                        node.sink.remote_presence(room, json.loads(event))

        self.hub.queue.append(run)

    def signal(self, room: str, encoded: str) -> None:
        if self.detached:
            return  # ephemeral: lost with the link

        def run() -> None:
            for node in list(self.hub.room(room).subscribers):
                if node is not self:
                    node.sink.remote_signal(room, encoded)

        self.hub.queue.append(run)

    def detach(self) -> None:
        """Its links drop: deliveries to it are lost from now on."""
        self.hub.pump()
        self.detached = True
        for state in self.hub.rooms.values():
            state.subscribers.discard(self)

    def attach_again(self) -> None:
        self.detached = False
        self.reconnected()

    def reconnected(self) -> None:
        """As after an outage: members registered again, rooms reloaded."""
        for room in self.open:
            for member_id, name in self.sink.local_members(room):
                event = {"type": "join", "room": room, "id": member_id, "name": name}
                self.presence(room, member_id, name, json.dumps(event))
        for room in list(self.open):
            self.hub.queue.append(partial(self._load, room))
