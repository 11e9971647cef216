"""Rooms whose state lives in a remote backplane, as they load and reload.

With a remote backplane (Redis) a node holds a room only while someone here is
in it. A join of a room not held yet waits while the backplane loads it; the
first load lets the waiting joins go ahead. After an outage the backplane loads
the room again, and members hear either what they missed (a catch-up, with a
gap first if history no longer reaches back) or, if the backplane lost the room
and numbering restarted, what a join would answer in the new epoch. A resume
whose ``since`` is past what this node holds, in the same epoch, means another
node is ahead: it waits until this one has caught up (``wait_behind``), since
answering now would either reset it or repeat what it has seen. Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from wsnet.chat.backplane import Backplane
from wsnet.chat.batch import Batch
from wsnet.chat.presence import encoded_snapshot
from wsnet.chat.protocol import ChatError, Join, encode_event
from wsnet.chat.state import Member, Room
from wsnet.chat.table import RoomTable

__all__ = ["CATCH_UP_WAIT", "Loading"]

#: Seconds a resume may wait for this node to catch up with the backplane: the
#: longest reconnect backoff (5 s) and a reload, with room to spare. Past it the
#: join is refused with ``unavailable``, to be tried again.
CATCH_UP_WAIT = 10.0

P = TypeVar("P")


class Loading(Generic[P]):
    """Joins waiting for rooms, and what a (re)load of a room means for them.

    ``Chat`` owns it and lends it its table, batch and backplane, and the four
    acts a load leads to: join, a room emptied, a message delivered, a reply.
    """

    def __init__(
        self,
        table: RoomTable,
        batch: Batch[P],
        backplane: Backplane,
        *,
        join: Callable[[Member[P], Join], None],
        emptied: Callable[[Room], None],
        deliver: Callable[[str, int, str], None],
        reply: Callable[[Member[P], dict[str, Any]], None],
    ) -> None:
        self._table = table
        self._batch = batch
        self._backplane = backplane
        self._join_now = join
        self._emptied = emptied
        self._deliver = deliver
        self._reply = reply
        self._behind: set[Room] = set()

    def wait_for(self, member: Member[P], command: Join, room: Room | None) -> None:
        """A join of a room this node does not hold yet: load it, join then."""
        if member.joining is None:
            member.joining = {}
        member.joining[command.room] = command
        if room is not None:
            room.waiting.append(member)
            return
        room = self._table.placeholder(command.room)
        room.waiting.append(member)
        self._backplane.open_room(command.room)  # may fail at once

    def wait_behind(self, member: Member[P], command: Join, room: Room, deadline: float) -> None:
        """A resume past this node's ``seq`` in the same epoch: join once
        ``room.seq`` reaches ``command.since`` (``caught_up``)."""
        if member.joining is None:
            member.joining = {}
        member.joining[command.room] = command
        room.behind.append((member, deadline))
        self._behind.add(room)

    def caught_up(self, room: Room, now: float | None = None) -> None:
        """Let the resumes this room's ``seq`` now covers go ahead; with ``now``,
        refuse those past their deadline."""
        waiting, room.behind = room.behind, []
        for member, deadline in waiting:
            command = member.joining.get(room.name) if member.joining else None
            if command is None or member.gone:
                continue
            if command.since is None or command.since <= room.seq:
                self._release(member, command)
            elif now is not None and now >= deadline:
                assert member.joining is not None
                del member.joining[room.name]
                detail = "cannot resume now: this node is catching up; try again"
                self._reply(member, ChatError("unavailable", detail, room.name).event())
            else:
                room.behind.append((member, deadline))
        if not room.behind:
            self._behind.discard(room)

    def expire(self, now: float) -> None:
        for room in list(self._behind):
            self.caught_up(room, now)

    def _release(self, member: Member[P], command: Join) -> None:
        assert member.joining is not None
        del member.joining[command.room]
        self._join_now(member, command)

    def unwait(self, member: Member[P], name: str) -> None:
        if member.joining is not None:
            member.joining.pop(name, None)
        room = self._table.rooms.get(name)
        if room is not None and room.loading and member in room.waiting:
            room.waiting.remove(member)

    def loaded(
        self, name: str, epoch: str, seq: int, history: list[tuple[int, str]],
        remote: dict[str, str],
    ) -> None:
        """The backplane's state of a room: its first load here, or a reload
        after an outage (a new epoch, or what was missed)."""
        room = self._table.rooms.get(name)
        if room is None:
            return
        if room.loading:
            self._first_load(room, epoch, seq, history, remote)
            return
        changed = remote != room.remote
        room.remote = remote
        if epoch != room.epoch:
            self._epoch_reset(room, epoch, seq, history)
            return
        self._catch_up(room, seq, history)
        if changed and not room.counting:
            self._batch.emit(room, encoded_snapshot(room, numbering=False))

    def _first_load(
        self, room: Room, epoch: str, seq: int, history: list[tuple[int, str]],
        remote: dict[str, str],
    ) -> None:
        """The room is known here at last: the joins waiting for it go ahead."""
        room.loading = False
        room.epoch, room.seq, room.remote = epoch, 0, remote
        self._table.load(room, history)
        room.seq = max(room.seq, seq)
        waiting, room.waiting = room.waiting, []
        for member in waiting:
            command = member.joining.pop(room.name, None) if member.joining else None
            if command is not None and not member.gone:
                self._join_now(member, command)
        if not room.members:
            self._emptied(room)

    def _epoch_reset(
        self, room: Room, epoch: str, seq: int, history: list[tuple[int, str]],
    ) -> None:
        """The backplane lost the room and numbering restarted. Members hear
        what a join would answer: the new epoch, a reset gap, and what the new
        epoch already holds."""
        since = room.seq
        room.epoch, room.seq = epoch, 0
        room.history.clear()
        self._table.load(room, history)
        room.seq = max(room.seq, seq)
        emit = self._batch.emit
        emit(room, encoded_snapshot(room))
        emit(room, encode_event({"type": "gap", "room": room.name, "since": since,
                                 "first": room.first_seq, "reset": True}))
        for _, data in room.history:
            emit(room, data.decode())
        for member, _ in room.behind:  # the epoch they resume in is gone: a reset
            command = member.joining.get(room.name) if member.joining else None
            if command is not None and not member.gone:
                self._release(member, command)
        room.behind = []
        self._behind.discard(room)

    def _catch_up(self, room: Room, seq: int, history: list[tuple[int, str]]) -> None:
        """What was published while we were away: all of it, or a gap first if
        the backplane's history no longer reaches back to where we were."""
        first = history[0][0] if history else seq + 1
        if first > room.seq + 1:
            gap = {"type": "gap", "room": room.name, "since": room.seq, "first": first}
            self._batch.emit(room, encode_event(gap))
            room.history.clear()
            room.seq = first - 1
        for entry_seq, event in history:
            self._deliver(room.name, entry_seq, event)

    def failed(self, name: str) -> None:
        """The backplane could not load a room: the joins waiting for it fail."""
        room = self._table.rooms.get(name)
        if room is None or not room.loading:
            return
        self._table.drop(room)
        for member in room.waiting:
            if member.joining is not None:
                member.joining.pop(name, None)
            detail = "cannot join now: the chat backplane is unavailable; try again"
            self._reply(member, ChatError("unavailable", detail, name).event())
