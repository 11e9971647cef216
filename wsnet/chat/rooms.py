"""Rooms, presence, history and per-tick batching, without sockets.

``Chat`` is fed commands and a clock and answers with frames: ``connect``
returns the welcome frame, and ``flush`` (once per tick) returns each batch as
``(peers, frame)``, where every peer in the list gets the same text. A peer is
whatever the caller uses to reach a client (the server passes connections).

Batching rules, which the tests hold it to:

- A client gets at most one frame per tick, holding the tick's events of all
  its rooms after its own replies (``personal`` events, in order).
- Members with the same set of active rooms and nothing personal share one
  frame, so the common case (one room, no replies) is one encode per room.
- A client that joins mid-tick got the room's state in its join reply, so it
  skips the events the room had already queued (``skip``); one that leaves
  mid-tick still gets what was queued before it left, then its ``leave``.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, TypeVar

from wsnet.chat.backplane import Backplane, LocalBackplane, new_epoch
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

__all__ = ["Chat", "ChatSettings", "Member", "Room"]

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """The chat application's limits, each a named default with its reason."""

    #: Messages a room keeps for replay: about an evening of a lively channel.
    history: int = 1000
    #: ...and at most this many bytes of them (encoded), so big texts cannot
    #: make one room's history tens of megabytes.
    history_bytes: int = 1 << 20
    #: Rooms one connection may be in at once: a sidebar, not a crawler.
    max_rooms_per_client: int = 32
    #: Above this many members presence is a count (see ``Room.counting``):
    #: member lists in every join reply would cost O(members²) per room.
    presence_limit: int = 100
    #: How often a counting room's members hear the new count, in seconds.
    count_interval: float = 1.0
    #: An empty room keeps its history this long for clients coming back.
    room_ttl: float = 600.0
    #: ...and at most this many empty rooms are kept, oldest forgotten first.
    max_idle_rooms: int = 10_000
    #: All rooms' history together: past it, empty rooms are forgotten oldest
    #: first, then the room being written to keeps less.
    history_total_bytes: int = 256 << 20

    def __post_init__(self) -> None:
        if self.history < 0 or self.max_rooms_per_client < 1 or self.presence_limit < 0:
            raise ValueError("history >= 0, max_rooms_per_client >= 1, presence_limit >= 0")
        if not 64 * 1024 <= self.history_bytes <= self.history_total_bytes:
            raise ValueError("64 KiB <= history_bytes <= history_total_bytes")
        if not (self.count_interval > 0 and self.room_ttl >= 0 and self.max_idle_rooms >= 0):
            raise ValueError("count_interval > 0, room_ttl >= 0, max_idle_rooms >= 0")

    @property
    def replay_budget(self) -> int:
        """Replayed bytes one client may ask for in one tick: two full rooms.
        Without it, join-with-since and leave in a loop would copy a room's
        whole history into one frame a hundred times over."""
        return 2 * self.history_bytes


class Member(Generic[P]):
    """One connected client as the chat sees it."""

    __slots__ = ("peer", "id", "name", "pinned", "default_room", "rooms", "personal", "skip",
                 "stamp", "replayed", "joining", "gone")

    def __init__(self, peer: P, ident: str, name: str, pinned: bool) -> None:
        self.peer = peer
        self.id = ident
        self.name = name
        #: The name came from an auth token and cannot change.
        self.pinned = pinned
        self.default_room: str | None = None
        self.rooms: dict[str, Room] = {}
        #: Replies waiting for this tick's frame (None: nothing).
        self.personal: list[str] | None = None
        #: For rooms joined this tick: how many of their queued events to skip.
        self.skip: dict[Room, int] | None = None
        self.stamp = 0  # the last flush that built this member's frame
        self.replayed = 0  # history bytes replayed to it this tick
        #: Joins waiting for a remote room to load (Redis backplane): name -> command.
        self.joining: dict[str, Join] | None = None
        self.gone = False  # disconnected: late answers are dropped

    def __repr__(self) -> str:
        return f"<Member {self.id} {self.name!r} in {len(self.rooms)} rooms>"


class Room:
    """Members, the message sequence, history, and the tick's queued events."""

    __slots__ = ("name", "order", "epoch", "seq", "members", "multi", "pending", "history",
                 "history_bytes", "counting", "count_due", "remote", "loading", "waiting")

    def __init__(self, name: str, order: int, epoch: str) -> None:
        self.name = name
        self.order = order  # creation order: sorts rooms the same way for everyone
        #: Names this incarnation of the room's ``seq`` numbering.
        self.epoch = epoch
        self.seq = 0
        #: Member -> its peer, in join order: ``values()`` is a ready recipient list.
        self.members: dict[Member[Any], Any] = {}
        #: How many members are in other rooms too (they need a frame per room set).
        self.multi = 0
        self.pending: list[str] = []
        #: (seq, event as UTF-8): bytes, so that what is counted is what is held.
        self.history: deque[tuple[int, bytes]] = deque()
        self.history_bytes = 0
        #: Presence is a count, not a member list (more than presence_limit members).
        self.counting = False
        self.count_due = 0.0  # when its members may next hear the count
        #: Members on other nodes (backplane): id -> name.
        self.remote: dict[str, str] = {}
        #: Its state is being fetched from the backplane; ``waiting`` join it then.
        self.loading = False
        self.waiting: list[Member[Any]] = []

    @property
    def size(self) -> int:
        return len(self.members) + len(self.remote)

    @property
    def first_seq(self) -> int:
        """The oldest ``seq`` history can replay (``seq + 1`` if none)."""
        return self.history[0][0] if self.history else self.seq + 1

    def __repr__(self) -> str:
        return f"<Room {self.name!r} seq={self.seq} members={len(self.members)}>"


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
        self._history_total = 0
        self.rooms: dict[str, Room] = {}
        #: Empty rooms kept for their history, oldest first: name -> emptied at.
        self._idle: OrderedDict[str, float] = OrderedDict()
        self._active: list[Room] = []  # rooms with queued events this tick
        self._touched: set[Member[P]] = set()  # members with personal or skip state
        self._counts: set[Room] = set()  # counting rooms whose count changed
        self._rooms_made = 0
        self._stamp = 0

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
        member.personal = None
        if member.skip is None:
            self._touched.discard(member)
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
            self._personal(member).append(encode_event(event))

    def disconnect(self, member: Member[P]) -> None:
        """The client is gone: it leaves every room, its replies are dropped."""
        for room in list(member.rooms.values()):
            self._remove(member, room)
        for name in list(member.joining or ()):
            self._unwait(member, name)
        member.gone = True
        member.personal = None
        member.skip = None
        self._touched.discard(member)

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
            self._history_total -= room.history_bytes
            room.history.clear()
            room.history_bytes = 0
        room.seq = seq
        self._remember(room, data)
        self._emit(room, encoded)

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
        if self._remote:
            self.backplane.presence(name, member.id, member.name, joined)
        if room.counting:
            self._count_changed(room)
        elif room.size > self.settings.presence_limit:
            room.counting = True
            self._emit(room, encode_event(_count_event(room)))
            room.count_due = self.timer() + self.settings.count_interval
        else:
            self._emit(room, joined)
        if room.pending:
            if member.skip is None:
                member.skip = {}
            member.skip[room] = len(room.pending)
            self._touched.add(member)
        personal = self._personal(member)
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
        personal = self._personal(member)
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
            if self._remote:
                self.backplane.presence(room.name, member.id, member.name, encoded)
            if not room.counting:
                self._emit(room, encoded)
        self.reply(member, {"type": "nick", "id": member.id, "name": member.name, "old": old})

    # -- rooms ---------------------------------------------------------------

    def _room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            self._rooms_made += 1
            room = self.rooms[name] = Room(name, self._rooms_made, self._new_epoch())
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
        if self._remote:
            self.backplane.presence(room.name, member.id, None, left)
        if room.counting:
            self._count_changed(room)
        else:
            self._emit(room, left)
        if not room.members:
            self._emptied(room)

    def _emptied(self, room: Room) -> None:
        room.pending.clear()  # nobody to tell; the room may stay listed as active
        room.counting = False
        self._counts.discard(room)
        if self._remote:  # history lives in the backplane: forget the room here
            self._history_total -= room.history_bytes
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
        room = self.rooms.pop(name)
        self._history_total -= room.history_bytes

    def _remember(self, room: Room, data: bytes) -> None:
        history = room.history
        history.append((room.seq, data))
        room.history_bytes += len(data)
        self._history_total += len(data)
        while self._history_total > self.settings.history_total_bytes and self._idle:
            self._forget_oldest_idle()
        limit, budget = self.settings.history, self.settings.history_bytes
        total_budget = self.settings.history_total_bytes
        while history and (
            len(history) > limit
            or room.history_bytes > budget
            or (self._history_total > total_budget and len(history) > 1)
        ):
            size = len(history.popleft()[1])
            room.history_bytes -= size
            self._history_total -= size

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
        # History holds consecutive seqs (a seq moves only once its event is
        # stored), so the position of ``after + 1`` is arithmetic.
        size = 0
        for _, data in islice(room.history, max(0, after + 1 - first), None):
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

    def _count_changed(self, room: Room) -> None:
        self._counts.add(room)

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
            self._emit(room, encode_event(event))

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
            room = self.rooms[command.room] = Room(command.room, self._rooms_made, "")
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
        """The backplane's state of a room: its first load here (the waiting
        joins go ahead), or a reload after an outage (catch up, or reset)."""
        room = self.rooms.get(name)
        if room is None:
            return
        if room.loading:
            room.loading = False
            room.epoch, room.seq, room.remote = epoch, 0, remote
            self._load_history(room, history)
            room.seq = max(room.seq, seq)
            waiting, room.waiting = room.waiting, []
            for member in waiting:
                command = member.joining.pop(name, None) if member.joining else None
                if command is not None and not member.gone:
                    self._join(member, command)
            if not room.members:
                self._emptied(room)
            return
        changed = remote != room.remote
        room.remote = remote
        if epoch != room.epoch:  # the backplane lost the room: numbering restarted
            # Members hear what a join would answer: the new epoch, a reset gap,
            # and what the new epoch already holds.
            since = room.seq
            room.epoch, room.seq = epoch, 0
            self._history_total -= room.history_bytes
            room.history.clear()
            room.history_bytes = 0
            self._load_history(room, history)
            room.seq = max(room.seq, seq)
            self._emit(room, encode_event(self._snapshot(room)))
            gap = {"type": "gap", "room": name, "since": since, "first": room.first_seq,
                   "reset": True}
            self._emit(room, encode_event(gap))
            for _, data in room.history:
                self._emit(room, data.decode())
            return
        # What was published while we were away: all of it, or a gap first if
        # the backplane's history no longer reaches back to where we were.
        first = history[0][0] if history else seq + 1
        if first > room.seq + 1:
            gap = {"type": "gap", "room": name, "since": room.seq, "first": first}
            self._emit(room, encode_event(gap))
            self._history_total -= room.history_bytes
            room.history.clear()
            room.history_bytes = 0
            room.seq = first - 1
        for entry_seq, event in history:
            self.deliver(name, entry_seq, event)
        if changed and not room.counting:
            snapshot = self._snapshot(room)
            del snapshot["epoch"], snapshot["seq"]
            self._emit(room, encode_event(snapshot))

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
        if room.counting:
            if kind != "nick":
                self._count_changed(room)
        elif room.size > self.settings.presence_limit:
            room.counting = True
            self._emit(room, encode_event(_count_event(room)))
            room.count_due = self.timer() + self.settings.count_interval
        else:
            self._emit(room, encode_event({**event, "room": name}))

    def local_members(self, name: str) -> list[tuple[str, str]]:
        room = self.rooms.get(name)
        return [(m.id, m.name) for m in room.members] if room is not None else []

    # -- batching ------------------------------------------------------------

    def _emit(self, room: Room, encoded: str) -> None:
        if not room.pending:
            self._active.append(room)
        room.pending.append(encoded)

    def _personal(self, member: Member[P]) -> list[str]:
        if member.personal is None:
            member.personal = []
            self._touched.add(member)
        return member.personal

    def flush(self) -> list[tuple[list[P], str]]:
        """End the tick: every frame to send, each with the peers that get it."""
        now = self.timer()
        self._update_counts(now)
        self._expire(now)
        self._stamp += 1
        stamp = self._stamp
        # A room emptied and refilled this tick is listed twice: keep one.
        active = list(dict.fromkeys(room for room in self._active if room.pending))
        self._active = []
        joined = {room: ",".join(room.pending) for room in active}
        groups: dict[tuple[Room, ...], list[P]] = {}
        frames: list[tuple[list[P], str]] = []
        # Rooms where someone has replies, a mid-tick join, or other rooms need
        # a look at each member; the rest send one frame to all, built in C.
        busy = {room for member in self._touched for room in member.rooms.values()}
        for room in active:
            if not room.multi and room not in busy:
                groups[(room,)] = list(room.members.values())
                continue
            simple: list[P] = []
            for member in room.members:
                if member.stamp == stamp:
                    continue
                if member.personal is None and member.skip is None and len(member.rooms) == 1:
                    simple.append(member.peer)
                    continue
                member.stamp = stamp
                self._complex(member, joined, groups, frames)
            if simple:
                groups.setdefault((room,), []).extend(simple)
        for member in self._touched:
            if member.stamp != stamp and member.personal:
                member.stamp = stamp
                self._complex(member, joined, groups, frames)
            member.personal = None
            member.skip = None
            member.replayed = 0
        self._touched.clear()
        for room in active:
            room.pending = []
        for key, peers in groups.items():
            frames.append((peers, "[" + ",".join(joined[room] for room in key) + "]"))
        return frames

    def _complex(
        self,
        member: Member[P],
        joined: dict[Room, str],
        groups: dict[tuple[Room, ...], list[P]],
        frames: list[tuple[list[P], str]],
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

    # -- reporting -----------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {
            "rooms": len(self.rooms) - len(self._idle),
            "idle_rooms": len(self._idle),
            "history_messages": sum(len(r.history) for r in self.rooms.values()),
        }


def _by_order(room: Room) -> int:
    return room.order


def _person(kind: str, room: Room, member: Member[Any]) -> dict[str, Any]:
    return {"type": kind, "room": room.name, "id": member.id, "name": member.name}


def _count_event(room: Room) -> dict[str, Any]:
    return {"type": "presence", "room": room.name, "count": room.size}
