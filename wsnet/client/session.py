"""The client's side of chat protocol v1, without sockets: what to ask for on
each (re)connection, and which received events reach the caller.

The rules that make a caller see every message of its rooms exactly once and in
``seq`` order across drops:

- Each joined room keeps its position, ``(epoch, seq)``; a reconnection joins
  it again with ``since``/``epoch``, so the server replays exactly what was
  missed (or says ``gap``, with ``reset`` if the numbering started over).
- A message is delivered only if it is the next ``seq`` of the room's epoch;
  anything at or below the position is a repeat and dropped.
- A sent message stays in the outbox, under its ``cid``, until its own event
  comes back; after a reconnection it is sent again once the room's join answer
  arrived (the server keeps the first copy per name and ``cid``, so a resend
  is never a second message). ``unavailable`` keeps it for a later resend;
  any other refusal drops it and is delivered as the error it is.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

__all__ = ["ClientSession", "Event", "Position"]

Event = dict[str, Any]


@dataclass(slots=True)
class Position:
    """Where the caller is in one room: the numbering and the last seq delivered."""

    epoch: str | None = None
    seq: int = 0
    joined: bool = False  # the join answer of this connection has arrived


@dataclass(slots=True)
class Outgoing:
    room: str
    text: str
    cid: str
    sent: bool = False  # on the current connection


@dataclass
class ClientSession:
    """One user's rooms, positions and unacknowledged messages."""

    name: str | None = None
    token: str | None = None
    rooms: dict[str, Position] = field(default_factory=dict)
    outbox: dict[str, Outgoing] = field(default_factory=dict)
    #: The connection's id and our name as the server knows them.
    id: str | None = None
    connected: bool = False
    #: The room the URL joins (the first one asked for).
    default_room: str | None = None

    # -- what the caller asks ------------------------------------------------

    def join(self, room: str) -> list[str]:
        """Frames to send now (none while disconnected: the connection joins)."""
        if room in self.rooms:
            return []
        self.rooms[room] = Position()
        if self.default_room is None:
            self.default_room = room
        return [self._join_frame(room)] if self.connected else []

    def leave(self, room: str) -> list[str]:
        position = self.rooms.pop(room, None)
        for cid in [c for c, o in self.outbox.items() if o.room == room]:
            del self.outbox[cid]
        if self.default_room == room:
            self.default_room = next(iter(self.rooms), None)
        if position is None or not self.connected:
            return []
        return [_encode({"type": "leave", "room": room})]

    def send(self, room: str, text: str) -> tuple[str, list[str]]:
        """A new message: its cid, and the frames to send now (if any)."""
        if room not in self.rooms:
            raise ValueError(f"join {room!r} before sending to it")
        cid = secrets.token_urlsafe(12)
        item = Outgoing(room, text, cid)
        self.outbox[cid] = item
        return cid, self._transmit(item)

    def typing(self, room: str) -> list[str]:
        ready = self.connected and self.rooms.get(room, Position()).joined
        return [_encode({"type": "typing", "room": room})] if ready else []

    def query(self) -> str:
        """The upgrade URL's query: who we are, and the first room with its position."""
        params: dict[str, str] = {}
        if self.token is not None:
            params["token"] = self.token
        if self.name is not None:
            params["name"] = self.name
        room = self.default_room
        if room is not None:
            params["room"] = room
            params.update(_resume(self.rooms[room]))
        return urlencode(params)

    # -- what the connection does ----------------------------------------------

    def connection_made(self) -> list[str]:
        """The socket is open (the URL joined the default room): join the others."""
        self.connected = True
        for position in self.rooms.values():
            position.joined = False
        for item in self.outbox.values():
            item.sent = False
        return [self._join_frame(room) for room in self.rooms if room != self.default_room]

    def connection_lost(self) -> None:
        self.connected = False
        self.id = None

    def receive(self, frame: str) -> tuple[list[Event], list[str]]:
        """One server frame: the events for the caller, and frames to send."""
        try:
            events = json.loads(frame)
        except ValueError:
            return [], []
        deliver: list[Event] = []
        reply: list[str] = []
        for event in events if isinstance(events, list) else ():
            if isinstance(event, dict):
                self._event(event, deliver, reply)
        return deliver, reply

    def resend_unavailable(self) -> list[str]:
        """Frames for messages refused as ``unavailable``: try them again."""
        return [frame for item in self.outbox.values() if not item.sent
                for frame in self._transmit(item)]

    # -- events --------------------------------------------------------------

    def _event(self, event: Event, deliver: list[Event], reply: list[str]) -> None:
        kind, room = event.get("type"), event.get("room")
        if kind == "welcome":
            self.id = event.get("id")
            self.name = event.get("name", self.name)
            deliver.append(event)
            return
        if kind == "nick" and room is None:
            if event.get("id") == self.id:
                self.name = event.get("name", self.name)
            deliver.append(event)
            return
        position = self.rooms.get(room) if isinstance(room, str) else None
        if kind == "error":
            self._error(event, deliver)
            return
        if position is None:
            if kind == "presence" and isinstance(room, str) and "epoch" in event:
                reply.append(_encode({"type": "leave", "room": room}))  # not ours (the lobby)
            return
        if kind == "presence" and "epoch" in event:
            self._joined(room, position, event, deliver, reply)
        elif kind == "gap":
            if event.get("reset"):
                position.seq = 0
            first = event.get("first")
            if isinstance(first, int):
                position.seq = max(position.seq, first - 1)
            deliver.append(event)
        elif kind == "message":
            self._message(position, event, deliver)
        elif kind == "leave" and event.get("id") == self.id:
            return  # our own leave: the room is gone from ``rooms`` already
        else:
            deliver.append(event)  # join, leave, nick, presence counts and diffs, typing

    def _joined(
        self, room: Any, position: Position, event: Event, deliver: list[Event],
        reply: list[str],
    ) -> None:
        epoch, seq = event["epoch"], event.get("seq")
        if position.epoch is None:
            position.seq = seq if isinstance(seq, int) else 0  # from now on
        elif epoch != position.epoch:
            position.seq = 0  # started over: the reset gap that follows says from where
        position.epoch = epoch
        position.joined = True
        deliver.append(event)
        for item in self.outbox.values():
            if item.room == room and not item.sent:
                reply.extend(self._transmit(item))

    def _message(self, position: Position, event: Event, deliver: list[Event]) -> None:
        seq = event.get("seq")
        cid = event.get("cid")
        if isinstance(cid, str) and cid in self.outbox and event.get("from") == self.name:
            del self.outbox[cid]
        if not isinstance(seq, int) or seq <= position.seq:
            return  # seen already (a replay overlapping what we had, or a resend's echo)
        position.seq = seq
        deliver.append(event)

    def _error(self, event: Event, deliver: list[Event]) -> None:
        cid = event.get("cid")
        item = self.outbox.get(cid) if isinstance(cid, str) else None
        if item is not None and event.get("error") == "unavailable":
            item.sent = False  # kept: ``resend_unavailable`` tries again
            return
        if item is not None:
            del self.outbox[item.cid]
        room = event.get("room")
        if event.get("error") == "forbidden" and item is None and isinstance(room, str):
            self.rooms.pop(room, None)  # a join refused: not ours to resume
        deliver.append(event)

    # -- frames ----------------------------------------------------------------

    def _join_frame(self, room: str) -> str:
        return _encode({"type": "join", "room": room, **_resume(self.rooms[room], typed=True)})

    def _transmit(self, item: Outgoing) -> list[str]:
        if not (self.connected and self.rooms.get(item.room, Position()).joined):
            return []
        item.sent = True
        return [_encode({"type": "message", "room": item.room, "text": item.text,
                         "cid": item.cid})]

    def pending(self) -> Iterable[Outgoing]:
        return self.outbox.values()


def _resume(position: Position, typed: bool = False) -> dict[str, Any]:
    if position.epoch is None:
        return {}
    return {"since": position.seq if typed else str(position.seq), "epoch": position.epoch}


def _encode(command: Event) -> str:
    return json.dumps(command, ensure_ascii=False, separators=(",", ":"))
