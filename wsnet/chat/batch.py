"""One tick's events, and how they become as few frames as possible.

Rules the tests hold it to:

- A client gets at most one frame per tick, holding the tick's events of all
  its rooms after its own replies (``personal`` events, in order).
- Members with the same set of active rooms and nothing personal share one
  frame, so the common case (one room, no replies) is one encode per room.
- A client that joins mid-tick got the room's state in its join reply, so it
  skips the events the room had already queued (``skip``); one that leaves
  mid-tick still gets what was queued before it left, then its ``leave``.
Pure: frames come out as ``(peers, text)``, every peer getting the same text.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from wsnet.chat.protocol import frame
from wsnet.chat.state import Member, Room

__all__ = ["Batch", "Frames"]

P = TypeVar("P")

Frames = list[tuple[list[P], str]]


class Batch(Generic[P]):
    """The rooms with queued events and the members with personal state."""

    __slots__ = ("active", "touched", "_stamp")

    def __init__(self) -> None:
        self.active: list[Room] = []  # rooms with queued events this tick
        self.touched: set[Member[P]] = set()  # members with personal or skip state
        self._stamp = 0

    def emit(self, room: Room, encoded: str) -> None:
        """Queue an event for every member of the room."""
        if not room.pending:
            self.active.append(room)
        room.pending.append(encoded)

    def personal(self, member: Member[P]) -> list[str]:
        """This member's own replies for this tick, to append to."""
        if member.personal is None:
            member.personal = []
            self.touched.add(member)
        return member.personal

    def skip_queued(self, member: Member[P], room: Room) -> None:
        """The member joined mid-tick: what the room queued so far is not its."""
        if room.pending:
            if member.skip is None:
                member.skip = {}
            member.skip[room] = len(room.pending)
            self.touched.add(member)

    def sent_directly(self, member: Member[P]) -> None:
        """Its replies went out already (the welcome frame); any skip stays."""
        member.personal = None
        if member.skip is None:
            self.touched.discard(member)

    def forget(self, member: Member[P]) -> None:
        """The member is gone: nothing of this tick reaches it."""
        member.personal = None
        member.skip = None
        self.touched.discard(member)

    def withdraw(self, events: set[str]) -> None:
        """Take these queued events back from every room and reply (a store
        could not keep them): nobody may see them. Skips still count what was
        queued before each member's join."""
        for room in self.active:
            if not any(e in events for e in room.pending):
                continue
            before = [0]  # before[i]: events withdrawn among pending[:i]
            for event in room.pending:
                before.append(before[-1] + (event in events))
            for member in self.touched:
                if member.skip and room in member.skip:
                    start = member.skip[room]
                    member.skip[room] = start - before[start]
            room.pending = [e for e in room.pending if e not in events]
        for member in self.touched:
            if member.personal:
                member.personal = [e for e in member.personal if e not in events]

    def frames(self) -> Frames[P]:
        """End the tick: every frame to send, each with the peers that get it."""
        self._stamp += 1
        stamp = self._stamp
        # A room emptied and refilled this tick is listed twice: keep one.
        active = list(dict.fromkeys(room for room in self.active if room.pending))
        self.active = []
        joined = {room: ",".join(room.pending) for room in active}
        groups: dict[tuple[Room, ...], list[P]] = {}
        frames: Frames[P] = []
        # Rooms where someone has replies, a mid-tick join, or other rooms need
        # a look at each member; the rest send one frame to all, built in C.
        busy = {room for member in self.touched for room in member.rooms.values()}
        for room in active:
            if not room.multi and room not in busy:
                groups[(room,)] = list(room.members.values())
                continue
            simple: list[P] = []
            member: Member[P]
            for member in room.members:
                if member.stamp == stamp:
                    continue
                if member.personal is None and member.skip is None and len(member.rooms) == 1:
                    simple.append(member.peer)
                    continue
                member.stamp = stamp
                _complex(member, joined, groups, frames)
            if simple:
                groups.setdefault((room,), []).extend(simple)
        for member in self.touched:
            if member.stamp != stamp and member.personal:
                member.stamp = stamp
                _complex(member, joined, groups, frames)
            member.personal = None
            member.skip = None
            member.replayed = 0
        self.touched.clear()
        for room in active:
            room.pending = []
        for key, peers in groups.items():
            frames.append((peers, "[" + ",".join(joined[room] for room in key) + "]"))
        return frames


def _complex(
    member: Member[P],
    joined: dict[Room, str],
    groups: dict[tuple[Room, ...], list[P]],
    frames: Frames[P],
) -> None:
    """A member in several rooms, or with replies or a mid-tick join."""
    rooms = sorted((r for r in member.rooms.values() if r in joined), key=_by_order)
    if member.personal is None and member.skip is None:
        groups.setdefault(tuple(rooms), []).append(member.peer)
        return
    parts = list(member.personal or ())
    skip = member.skip or {}
    for room in rooms:
        start = skip.get(room, 0)
        if start == 0:
            parts.append(joined[room])
        else:
            parts.extend(room.pending[start:])
    if parts:
        frames.append(([member.peer], frame(parts)))


def _by_order(room: Room) -> int:
    return room.order
