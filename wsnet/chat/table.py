"""The rooms one chat process holds, and what they remember.

``RoomTable`` makes and forgets rooms and keeps their history within the
settings' budgets. A room nobody is in stays, idle, for its history until
``room_ttl`` passes, more than ``max_idle_rooms`` wait, or the global budget
needs its bytes, oldest first. History is bytes (``history.History``), so what
is counted is what is held. With a ``store.Journal``, rooms made and forgotten
are told to it, and ``restore`` brings back a store's rooms at start. Pure:
time comes from the ``timer`` given.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from wsnet.chat.history import Ledger
from wsnet.chat.protocol import encode_event
from wsnet.chat.settings import ChatSettings
from wsnet.chat.state import Member, Room
from wsnet.chat.store import Journal, SavedRoom

__all__ = ["RoomTable"]


class RoomTable:
    """Every room by name, the idle ones oldest first, and one history ledger."""

    def __init__(
        self,
        settings: ChatSettings,
        timer: Callable[[], float],
        new_epoch: Callable[[], str],
        journal: Journal | None = None,
    ) -> None:
        self.rooms: dict[str, Room] = {}
        self.ledger = Ledger(settings.history, settings.history_bytes,
                             settings.history_total_bytes)
        #: Empty rooms kept for their history, oldest first: name -> emptied at.
        self._idle: OrderedDict[str, float] = OrderedDict()
        self._settings = settings
        self._timer = timer
        self._new_epoch = new_epoch
        self._journal = journal
        self._made = 0

    def open(self, name: str) -> Room:
        """The room, made with a new epoch if need be; it is no longer idle."""
        room = self.rooms.get(name)
        if room is None:
            room = self._make(name, self._new_epoch())
            if self._journal is not None:
                self._journal.room_made(room)
        else:
            self._idle.pop(name, None)
        return room

    def placeholder(self, name: str) -> Room:
        """A room whose state a backplane is still loading (no epoch yet)."""
        room = self._make(name, "")
        room.loading = True
        return room

    def _make(self, name: str, epoch: str) -> Room:
        self._made += 1
        room = self.rooms[name] = Room(name, self._made, epoch, self.ledger)
        return room

    @staticmethod
    def seat(member: Member[Any], room: Room) -> None:
        """The member is in the room now. ``multi`` counts the room's members
        that are in other rooms too (their frames cannot be shared per room)."""
        room.members[member] = member.peer
        member.rooms[room.name] = room
        if len(member.rooms) == 2:
            for other in member.rooms.values():
                other.multi += 1
        elif len(member.rooms) > 2:
            room.multi += 1

    @staticmethod
    def unseat(member: Member[Any], room: Room) -> None:
        del room.members[member]
        del member.rooms[room.name]
        if len(member.rooms) == 1:
            room.multi -= 1
            for other in member.rooms.values():
                other.multi -= 1
        elif len(member.rooms) > 1:
            room.multi -= 1

    def restore(self, saved: SavedRoom) -> None:
        """A room from a store, at start: idle (nobody is connected yet) from
        now, with its epoch, its ``seq`` and the history it keeps."""
        room = self._make(saved.name, saved.epoch)
        room.seq = saved.seq
        newest = [m for m in saved.messages if m[0] <= saved.seq]
        start = len(newest)  # keep the consecutive run that ends at the newest
        while start > 0 and newest[start - 1][0] == saved.seq - (len(newest) - start):
            start -= 1
        for seq, data, key in newest[start:]:
            room.history.append(seq, data, key)
            room.history.trim()
        self._idle[room.name] = self._timer()
        while self.ledger.over and len(self._idle) > 1:
            self._forget_oldest_idle()
        if len(self._idle) > self._settings.max_idle_rooms:
            self._forget_oldest_idle()

    def drop(self, room: Room) -> None:
        """Forget the room now, with its history."""
        room.history.clear()
        del self.rooms[room.name]
        self._idle.pop(room.name, None)
        if self._journal is not None:
            self._journal.room_forgotten(room.name)

    def park(self, room: Room) -> None:
        """Nobody is in the room: keep it for its history, if it has any."""
        if not room.history:
            self.drop(room)
            return
        self._idle[room.name] = self._timer()
        if len(self._idle) > self._settings.max_idle_rooms:
            self._forget_oldest_idle()

    def expire(self, now: float) -> None:
        """Forget the rooms idle for longer than ``room_ttl``."""
        idle, ttl = self._idle, self._settings.room_ttl
        while idle and now - next(iter(idle.values())) >= ttl:
            self._forget_oldest_idle()

    def _forget_oldest_idle(self) -> None:
        name, _ = self._idle.popitem(last=False)
        self.rooms.pop(name).history.clear()
        if self._journal is not None:
            self._journal.room_forgotten(name)

    def remember(self, room: Room, data: bytes, key: str | None = None) -> None:
        """Keep the room's newest message (``room.seq``); over the global budget,
        idle rooms are forgotten before this one keeps less."""
        room.history.append(room.seq, data, key)
        while self.ledger.over and self._idle:
            self._forget_oldest_idle()
        room.history.trim()

    def load(self, room: Room, history: list[tuple[int, str]]) -> None:
        """Take history from a backplane, keeping it consecutive."""
        for seq, event in history:
            if seq == room.seq + 1 or not room.history:
                room.seq = seq
                self.remember(room, event.encode())

    @staticmethod
    def replay(room: Room, since: int, epoch: str | None) -> tuple[list[str], int]:
        """What a join with ``since`` gets after the snapshot, and its history
        bytes: a gap notice if needed, then the messages after ``since`` that
        history holds, oldest first."""
        reset = since > room.seq or (epoch is not None and epoch != room.epoch)
        after = 0 if reset else since
        first = room.first_seq
        events: list[str] = []
        if reset or after + 1 < first:
            gap: dict[str, Any] = {"type": "gap", "room": room.name, "since": since,
                                   "first": first}
            if reset:
                gap["reset"] = True
            events.append(encode_event(gap))
        size = 0
        for data in room.history.after(after):
            events.append(data.decode())
            size += len(data)
        return events, size

    def stats(self) -> dict[str, int]:
        return {
            "rooms": len(self.rooms) - len(self._idle),
            "idle_rooms": len(self._idle),
            "history_messages": sum(len(r.history) for r in self.rooms.values()),
        }
