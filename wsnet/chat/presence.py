"""Who is in a room, as its members hear it: a member list, or a count.

Up to ``presence_limit`` members, a room's members hear each join, leave and
rename and get the full list on joining. Past it, the room switches to a count,
sent at most once per ``count_interval`` (a room of thousands would otherwise
spend its frames on presence), and back to the list once it is small again.
``Presence`` keeps that switch in one place for local and remote changes. Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsnet.chat.batch import Batch
from wsnet.chat.protocol import encode_event
from wsnet.chat.settings import ChatSettings
from wsnet.chat.state import Member, Room

__all__ = ["Presence", "count_event", "person_event", "snapshot_event"]


def person_event(kind: str, room: Room, member: Member[Any]) -> dict[str, Any]:
    """A ``join``, ``leave`` or ``nick`` event about one member."""
    return {"type": kind, "room": room.name, "id": member.id, "name": member.name}


def count_event(room: Room) -> dict[str, Any]:
    return {"type": "presence", "room": room.name, "count": room.size}


def snapshot_event(room: Room, numbering: bool = True) -> dict[str, Any]:
    """The room as a joiner sees it: its numbering (``epoch``, ``seq``, unless
    only presence changed), its size and, unless counting, its members."""
    snapshot: dict[str, Any] = {"type": "presence", "room": room.name}
    if numbering:
        snapshot["epoch"], snapshot["seq"] = room.epoch, room.seq
    snapshot["count"] = room.size
    if not room.counting:
        snapshot["members"] = [{"id": m.id, "name": m.name} for m in room.members]
        snapshot["members"] += [{"id": i, "name": n} for i, n in room.remote.items()]
    return snapshot


class Presence:
    """Presence events into the batch, and the counting rooms' pending counts."""

    def __init__(self, settings: ChatSettings, timer: Callable[[], float], batch: Batch[Any]):
        self._limit = settings.presence_limit
        self._interval = settings.count_interval
        self._timer = timer
        self._batch = batch
        self._counts: set[Room] = set()  # counting rooms whose count changed

    def changed(self, room: Room, encoded: str, resized: bool = True) -> None:
        """A join, leave or rename (``resized`` false): members hear the event,
        or, past the limit, the new count at its next due time."""
        if room.counting:
            if resized:
                self._counts.add(room)
        elif room.size > self._limit:
            room.counting = True
            self._batch.emit(room, encode_event(count_event(room)))
            room.count_due = self._timer() + self._interval
        else:
            self._batch.emit(room, encoded)

    def remote(self, room: Room, event: dict[str, Any]) -> None:
        """A join, leave or rename on another node, as the backplane tells it."""
        kind, ident, name = event.get("type"), str(event.get("id")), event.get("name")
        if room.loading or not isinstance(name, str):
            return
        if kind == "join":
            if room.remote.get(ident) == name:
                return  # known already (from a load, or announced again)
            room.remote[ident] = name
        elif kind == "leave":
            if room.remote.pop(ident, None) is None:
                return
        elif kind == "nick" and ident in room.remote:
            room.remote[ident] = name
        else:
            return
        self.changed(room, encode_event({**event, "room": room.name}), kind != "nick")

    def emptied(self, room: Room) -> None:
        room.counting = False
        self._counts.discard(room)

    def update(self, now: float) -> None:
        """Tell each counting room its new size, at most once per interval; a
        room back under the limit gets its member list again."""
        for room in [r for r in self._counts if now >= r.count_due]:
            self._counts.discard(room)
            room.count_due = now + self._interval
            if room.size <= self._limit:
                room.counting = False
                event = snapshot_event(room, numbering=False)
            else:
                event = count_event(room)
            self._batch.emit(room, encode_event(event))
