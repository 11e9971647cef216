"""Rooms, presence, history and resume: the chat's rules, without sockets.

``Chat`` is fed commands and a clock and answers with frames: ``connect``
returns the welcome frame, and ``flush`` (once per tick) returns each batch as
``(peers, frame)`` (see ``batch`` for how events become frames). A peer is
whatever the caller uses to reach a client (the server passes connections).
History is ``history.History`` per room under one ``Ledger``; a backplane
(``backplane``) numbers messages and tells ``Chat`` what other nodes did,
through the ``RoomSink`` methods at the end of the class.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from wsnet.chat.backplane import Backplane, LocalBackplane, new_epoch
from wsnet.chat.batch import Batch, Frames
from wsnet.chat.history import Ledger
from wsnet.chat.protocol import (
    ChatError,
    Command,
    Join,
    Leave,
    Nick,
    SendMessage,
    encode_event,
    frame,
    parse_command,
)
from wsnet.chat.settings import ChatSettings
from wsnet.chat.state import Member, Room

__all__ = ["Chat", "ChatSettings", "Member", "Room"]

P = TypeVar("P")


class Chat(Generic[P]):
    """All rooms of one server process."""

    def __init__(
        self,
        settings: ChatSettings | None = None,
        clock: Callable[[], float] = time.time,
        new_epoch: Callable[[], str] = new_epoch,
        timer: Callable[[], float] | None = None,
        backplane: Backplane | None = None,
    ) -> None:
        self.settings = settings or ChatSettings()
        self.backplane: Backplane = backplane or LocalBackplane()
        self.backplane.attach(self)
        self._remote = self.backplane.remote
        #: Wall-clock time, for the ``ts`` of messages only.
        self.clock = clock
        #: Time for intervals and expiry, which must not jump with the wall clock
        #: (the same as ``clock`` when only that is given, as tests do).
        self.timer = timer or (time.monotonic if clock is time.time else clock)
        self._new_epoch = new_epoch
        s = self.settings
        self._ledger = Ledger(s.history, s.history_bytes, s.history_total_bytes)
        self._batch: Batch[P] = Batch()
        self.rooms: dict[str, Room] = {}
        #: Empty rooms kept for their history, oldest first: name -> emptied at.
        self._idle: OrderedDict[str, float] = OrderedDict()
        self._counts: set[Room] = set()  # counting rooms whose count changed
        self._rooms_made = 0

    # -- clients -------------------------------------------------------------

    def connect(
        self,
        peer: P,
        ident: str,
        name: str,
        *,
        pinned: bool = False,
        room: str | None = None,
        since: int | None = None,
        epoch: str | None = None,
        errors: tuple[ChatError, ...] = (),
    ) -> tuple[Member[P], str]:
        """A client arrived: its member and its welcome frame (welcome, errors
        about its URL, then its default room's join reply)."""
        member: Member[P] = Member(peer, ident, name, pinned)
        member.personal = [encode_event({"type": "welcome", "id": ident, "name": name})]
        member.personal.extend(encode_event(e.event()) for e in errors)
        if room is not None:
            member.default_room = room
            self._join(member, Join(room, since, epoch))
        welcome = frame(member.personal)
        self._batch.sent_directly(member)
        return member, welcome

    def receive(self, member: Member[P], text: str) -> None:
        """One text frame from a client."""
        command = parse_command(text)
        if isinstance(command, ChatError):
            self.reply(member, command.event())
        else:
            self.execute(member, command)

    def execute(self, member: Member[P], command: Command) -> None:
        if isinstance(command, SendMessage):
            self._message(member, command)
        elif isinstance(command, Join):
            self._join(member, command)
        elif isinstance(command, Leave):
            self._leave(member, command.room)
        else:
            self._nick(member, command)

    def reply(self, member: Member[P], event: dict[str, Any]) -> None:
        """Queue an event for this member only, in its next tick frame."""
        if not member.gone:
            self._batch.personal(member).append(encode_event(event))

    def disconnect(self, member: Member[P]) -> None:
        """The client is gone: it leaves every room, its replies are dropped."""
        for room in list(member.rooms.values()):
            self._remove(member, room)
        for name in list(member.joining or ()):
            self._unwait(member, name)
        member.gone = True
        self._batch.forget(member)

    # -- commands ------------------------------------------------------------

    def _message(self, member: Member[P], command: SendMessage) -> None:
        name = command.room if command.room is not None else member.default_room
        room = member.rooms.get(name) if name is not None else None
        if room is None:
            where = f"join '{name}' first" if name is not None else "join a room first"
            self.reply(member, ChatError("not_in_room", where, name, command.cid).event())
            return
        head = {"type": "message", "room": room.name}
        rest: dict[str, Any] = {
            "from": member.name,
            "from_id": member.id,
            "text": command.text,
            "ts": int(self.clock() * 1000),
        }
        if command.cid is not None:
            rest["cid"] = command.cid
        # The backplane numbers the message: the event is written around its seq.
        prefix = encode_event(head)[:-1] + ',"seq":'
        suffix = "," + encode_event(rest)[1:]
        cid = command.cid

        def failed() -> None:
            detail = "not sent: the chat backplane is unavailable; try again"
            self.reply(member, ChatError("unavailable", detail, room.name, cid).event())

        self.backplane.publish(room.name, prefix, suffix, failed)

    def deliver(self, name: str, seq: int, encoded: str) -> None:
        """A numbered message of a room, from the backplane (or ourselves)."""
        room = self.rooms.get(name)
        if room is None or room.loading or seq <= room.seq:
            return  # not ours, not ready (it is in what loads), or seen already
        data = encoded.encode()  # before seq moves: a failure must not leave a hole
        if seq != room.seq + 1:  # a jump: history must stay consecutive
            room.history.clear()
        room.seq = seq
        self._remember(room, data)
        self._batch.emit(room, encoded)

    def _join(self, member: Member[P], command: Join) -> None:
        name = command.room
        if name in member.rooms:
            self.reply(member, ChatError("already_joined", f"already in '{name}'", name).event())
            return
        if member.joining and name in member.joining:
            self.reply(member, ChatError("already_joined", f"already in '{name}'", name).event())
            return
        limit = self.settings.max_rooms_per_client
        if len(member.rooms) + len(member.joining or ()) >= limit:
            error = ChatError("too_many_rooms", f"at most {limit} rooms at once", name)
            self.reply(member, error.event())
            return
        existing = self.rooms.get(name)
        if self._remote and (existing is None or existing.loading):
            self._wait_for(member, command, existing)
            return
        replay: list[str] = []
        if command.since is not None and existing is not None:
            replay, size = self._replay(existing, command.since, command.epoch)
            if member.replayed + size > self.settings.replay_budget:
                detail = "too much history at once: join again with since in a moment"
                self.reply(member, ChatError("replay_limited", detail, name).event())
                return
            member.replayed += size
        room = self._room(name)
        if command.since is not None and existing is None:
            replay, _ = self._replay(room, command.since, command.epoch)
        room.members[member] = member.peer
        member.rooms[name] = room
        if len(member.rooms) == 2:
            for other in member.rooms.values():
                other.multi += 1
        elif len(member.rooms) > 2:
            room.multi += 1
        joined = encode_event(_person("join", room, member))
        self.backplane.presence(name, member.id, member.name, joined)
        self._presence_changed(room, joined)
        self._batch.skip_queued(member, room)
        personal = self._batch.personal(member)
        personal.append(encode_event(self._snapshot(room)))
        personal.extend(replay)

    def _leave(self, member: Member[P], name: str) -> None:
        room = member.rooms.get(name)
        if room is None and member.joining and name in member.joining:
            self._unwait(member, name)
            self.reply(member, {"type": "leave", "room": name, "id": member.id,
                                "name": member.name})
            return
        if room is None:
            self.reply(member, ChatError("not_in_room", f"not in '{name}'", name).event())
            return
        personal = self._batch.personal(member)
        start = member.skip.pop(room, 0) if member.skip else 0
        personal.extend(room.pending[start:])  # what it was here for
        personal.append(encode_event(_person("leave", room, member)))
        self._remove(member, room)

    def _nick(self, member: Member[P], command: Nick) -> None:
        if member.pinned:
            self.reply(member, ChatError("name_pinned", "your token fixes your name").event())
            return
        old, member.name = member.name, command.name
        for room in member.rooms.values():
            event = _person("nick", room, member)
            event["old"] = old
            encoded = encode_event(event)
            self.backplane.presence(room.name, member.id, member.name, encoded)
            if not room.counting:
                self._batch.emit(room, encoded)
        self.reply(member, {"type": "nick", "id": member.id, "name": member.name, "old": old})

    # -- rooms ---------------------------------------------------------------

    def _room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            self._rooms_made += 1
            room = self.rooms[name] = Room(name, self._rooms_made, self._new_epoch(), self._ledger)
        else:
            self._idle.pop(name, None)
        return room

    def _remove(self, member: Member[P], room: Room) -> None:
        del room.members[member]
        del member.rooms[room.name]
        if len(member.rooms) == 1:
            room.multi -= 1
            for other in member.rooms.values():
                other.multi -= 1
        elif len(member.rooms) > 1:
            room.multi -= 1
        if member.skip is not None:
            member.skip.pop(room, None)
        left = encode_event(_person("leave", room, member))
        self.backplane.presence(room.name, member.id, None, left)
        if room.counting:
            self._counts.add(room)
        else:
            self._batch.emit(room, left)
        if not room.members:
            self._emptied(room)

    def _emptied(self, room: Room) -> None:
        room.pending.clear()  # nobody to tell; the room may stay listed as active
        room.counting = False
        self._counts.discard(room)
        if self._remote:  # history lives in the backplane: forget the room here
            room.history.clear()
            del self.rooms[room.name]
            self.backplane.close_room(room.name)
            return
        if not room.history:
            del self.rooms[room.name]
            return
        self._idle[room.name] = self.timer()
        if len(self._idle) > self.settings.max_idle_rooms:
            self._forget_oldest_idle()

    def _forget_oldest_idle(self) -> None:
        name, _ = self._idle.popitem(last=False)
        self.rooms.pop(name).history.clear()

    def _remember(self, room: Room, data: bytes) -> None:
        """Keep the room's newest message; over the global budget, idle rooms
        are forgotten before this one keeps less."""
        room.history.append(room.seq, data)
        while self._ledger.over and self._idle:
            self._forget_oldest_idle()
        room.history.trim()

    def _replay(self, room: Room, since: int, epoch: str | None) -> tuple[list[str], int]:
        """The join reply after the snapshot, and its history bytes: a gap
        notice if needed, then the messages after ``since`` that history holds,
        oldest first."""
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

    def _snapshot(self, room: Room) -> dict[str, Any]:
        snapshot: dict[str, Any] = {
            "type": "presence",
            "room": room.name,
            "epoch": room.epoch,
            "seq": room.seq,
            "count": room.size,
        }
        if not room.counting:
            snapshot["members"] = [{"id": m.id, "name": m.name} for m in room.members]
            snapshot["members"] += [{"id": i, "name": n} for i, n in room.remote.items()]
        return snapshot

    def _presence_changed(self, room: Room, encoded: str, resized: bool = True) -> None:
        """A join here, or any presence change on another node: members hear
        the event, or, past the presence limit, the count (at most once per
        ``count_interval``; a rename does not change it)."""
        if room.counting:
            if resized:
                self._counts.add(room)
        elif room.size > self.settings.presence_limit:
            room.counting = True
            self._batch.emit(room, encode_event(_count_event(room)))
            room.count_due = self.timer() + self.settings.count_interval
        else:
            self._batch.emit(room, encoded)

    def _update_counts(self, now: float) -> None:
        """Tell each counting room its new size, at most once per interval; a
        room back under the limit gets its member list again."""
        limit, interval = self.settings.presence_limit, self.settings.count_interval
        for room in [r for r in self._counts if now >= r.count_due]:
            self._counts.discard(room)
            room.count_due = now + interval
            if room.size <= limit:
                room.counting = False
                event = self._snapshot(room)
                del event["epoch"], event["seq"]
            else:
                event = _count_event(room)
            self._batch.emit(room, encode_event(event))

    def _expire(self, now: float) -> None:
        idle, ttl = self._idle, self.settings.room_ttl
        while idle:
            if now - next(iter(idle.values())) < ttl:
                break
            self._forget_oldest_idle()

    # -- the backplane's side ----------------------------------------------------

    def _wait_for(self, member: Member[P], command: Join, room: Room | None) -> None:
        """A join of a room this node does not hold yet: load it, join then."""
        if room is None:
            self._rooms_made += 1
            room = self.rooms[command.room] = Room(
                command.room, self._rooms_made, "", self._ledger)
            room.loading = True
            room.waiting.append(member)
            if member.joining is None:
                member.joining = {}
            member.joining[command.room] = command
            self.backplane.open_room(command.room)  # may fail at once
            return
        room.waiting.append(member)
        if member.joining is None:
            member.joining = {}
        member.joining[command.room] = command

    def _unwait(self, member: Member[P], name: str) -> None:
        if member.joining is not None:
            member.joining.pop(name, None)
        room = self.rooms.get(name)
        if room is not None and room.loading and member in room.waiting:
            room.waiting.remove(member)

    def room_loaded(
        self, name: str, epoch: str, seq: int, history: list[tuple[int, str]],
        remote: dict[str, str],
    ) -> None:
        """The backplane's state of a room: its first load here, or a reload
        after an outage (a new epoch, or what was missed)."""
        room = self.rooms.get(name)
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
            snapshot = self._snapshot(room)
            del snapshot["epoch"], snapshot["seq"]
            self._batch.emit(room, encode_event(snapshot))

    def _first_load(
        self, room: Room, epoch: str, seq: int, history: list[tuple[int, str]],
        remote: dict[str, str],
    ) -> None:
        """The room is known here at last: the joins waiting for it go ahead."""
        room.loading = False
        room.epoch, room.seq, room.remote = epoch, 0, remote
        self._load_history(room, history)
        room.seq = max(room.seq, seq)
        waiting, room.waiting = room.waiting, []
        for member in waiting:
            command = member.joining.pop(room.name, None) if member.joining else None
            if command is not None and not member.gone:
                self._join(member, command)
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
        self._load_history(room, history)
        room.seq = max(room.seq, seq)
        emit = self._batch.emit
        emit(room, encode_event(self._snapshot(room)))
        emit(room, encode_event({"type": "gap", "room": room.name, "since": since,
                                 "first": room.first_seq, "reset": True}))
        for _, data in room.history:
            emit(room, data.decode())

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
            self.deliver(room.name, entry_seq, event)

    def _load_history(self, room: Room, history: list[tuple[int, str]]) -> None:
        for entry_seq, event in history:
            if entry_seq == room.seq + 1 or not room.history:
                room.seq = entry_seq
                self._remember(room, event.encode())

    def room_failed(self, name: str) -> None:
        """The backplane could not load a room: the joins waiting for it fail."""
        room = self.rooms.get(name)
        if room is None or not room.loading:
            return
        del self.rooms[name]
        for member in room.waiting:
            if member.joining is not None:
                member.joining.pop(name, None)
            detail = "cannot join now: the chat backplane is unavailable; try again"
            self.reply(member, ChatError("unavailable", detail, name).event())

    def remote_presence(self, name: str, event: dict[str, Any]) -> None:
        """A join, leave or rename on another node."""
        room = self.rooms.get(name)
        kind, ident = event.get("type"), str(event.get("id"))
        if room is None or room.loading or not isinstance(event.get("name"), str):
            return
        if kind == "join":
            if room.remote.get(ident) == event["name"]:
                return  # known already (from a load, or announced again)
            room.remote[ident] = event["name"]
        elif kind == "leave":
            if room.remote.pop(ident, None) is None:
                return
        elif kind == "nick" and ident in room.remote:
            room.remote[ident] = event["name"]
        else:
            return
        self._presence_changed(room, encode_event({**event, "room": name}), kind != "nick")

    def local_members(self, name: str) -> list[tuple[str, str]]:
        room = self.rooms.get(name)
        return [(m.id, m.name) for m in room.members] if room is not None else []

    @property
    def history_limit(self) -> int:
        return self.settings.history

    def last_seq(self, name: str) -> int:
        room = self.rooms.get(name)
        return room.seq if room is not None else 0

    # -- the tick ------------------------------------------------------------

    def flush(self) -> Frames[P]:
        """End the tick: every frame to send, each with the peers that get it."""
        now = self.timer()
        self._update_counts(now)
        self._expire(now)
        return self._batch.frames()

    # -- reporting -----------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {
            "rooms": len(self.rooms) - len(self._idle),
            "idle_rooms": len(self._idle),
            "history_messages": sum(len(r.history) for r in self.rooms.values()),
        }


def _person(kind: str, room: Room, member: Member[Any]) -> dict[str, Any]:
    return {"type": kind, "room": room.name, "id": member.id, "name": member.name}


def _count_event(room: Room) -> dict[str, Any]:
    return {"type": "presence", "room": room.name, "count": room.size}
