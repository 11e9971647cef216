"""Rooms, presence, history and resume: the chat's rules, without sockets.

``Chat`` is fed commands and a clock and answers with frames: ``connect``
returns the welcome frame, and ``flush`` (once per tick) returns each batch as
``(peers, frame)`` (see ``batch`` for how events become frames). A peer is
whatever the caller uses to reach a client (the server passes connections).
History is ``history.History`` per room under one ``Ledger``; a backplane
(``backplane``) numbers messages and tells ``Chat`` what other nodes did,
through the ``RoomSink`` methods at the end of the class. With a ``store``
(single node only), every tick's messages are committed before its frames are
built (``store.Journal``), and a failed commit takes them back. ARCHITECTURE.md,
"The chat", maps the parts ``Chat`` is composed of.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from wsnet.chat.access import Access, room_access
from wsnet.chat.backplane import Backplane, LocalBackplane, new_epoch
from wsnet.chat.batch import Batch, Frames
from wsnet.chat.history import dedup_key
from wsnet.chat.loading import CATCH_UP_WAIT, Loading
from wsnet.chat.presence import Presence, encoded_snapshot, person_event
from wsnet.chat.protocol import (
    ChatError,
    Command,
    Join,
    Leave,
    Nick,
    SendMessage,
    Typing,
    encode_event,
    frame,
    member_entry,
    message_parts,
    parse_command,
)
from wsnet.chat.settings import ChatSettings
from wsnet.chat.signals import TypingSignals
from wsnet.chat.state import Member, Publication, Room
from wsnet.chat.store import Journal, Staged, Store
from wsnet.chat.table import RoomTable
from wsnet.metrics import Metric
from wsnet.tokens import Grant

__all__ = ["Chat", "ChatSettings", "Member", "Room"]

P = TypeVar("P")

#: The sender id of messages from the backend (the HTTP API), and its dedup
#: namespace (no member's name can hold a NUL).
API_ID = "api"
_API_KEYS = "\x00api"
#: The one answer to a join that access refuses: it tells nothing of the room.
FORBIDDEN = "you may not join this room"
READ_ONLY = "you may read this room, not write to it"


class Chat(Generic[P]):
    """All rooms of one server process."""

    def __init__(
        self,
        settings: ChatSettings | None = None,
        clock: Callable[[], float] = time.time,
        new_epoch: Callable[[], str] = new_epoch,
        timer: Callable[[], float] | None = None,
        backplane: Backplane | None = None,
        *,
        store: Store | None = None,
    ) -> None:
        self.settings = settings or ChatSettings()
        self.backplane: Backplane = backplane or LocalBackplane()
        self.backplane.attach(self)
        self._remote = self.backplane.remote
        if store is not None and self._remote:
            raise ValueError("a store is the single-node engine: a remote backplane keeps history")
        #: Wall-clock time, for the ``ts`` of messages only.
        self.clock = clock
        #: Time for intervals and expiry, which must not jump with the wall clock
        #: (the same as ``clock`` when only that is given, as tests do).
        self.timer = timer or (time.monotonic if clock is time.time else clock)
        self._journal = None if store is None else Journal(store, self.timer)
        self._table = RoomTable(self.settings, self.timer, new_epoch, self._journal)
        #: Every room by name (the table's own dict).
        self.rooms: dict[str, Room] = self._table.rooms
        if store is not None:
            for saved in store.load():
                self._table.restore(saved)
        #: The member whose message is being published (local numbering is
        #: synchronous), with its cid and dedup key, for ``deliver``.
        self._sender: tuple[Any, str | None, str | None] | None = None
        #: The backend's messages this tick, answered once committed.
        self._published: list[Publication] = []
        self._batch: Batch[P] = Batch()
        self._presence = Presence(self.settings, self.timer, self._batch)
        self._typing_rule = TypingSignals(self.settings, self.timer, self._batch, self.backplane,
                                   lambda m, room: self.access(m, room) is Access.WRITE)
        self._loading: Loading[P] = Loading(
            self._table, self._batch, self.backplane,
            join=self._join, emptied=self._emptied, deliver=self.deliver, reply=self.reply,
        )
        #: RoomSink: the backplane's state of a room, or its failure to load it
        #: (``loading.Loading``: the joins waiting for it go ahead, or fail).
        self.room_loaded = self._loading.loaded
        self.room_failed = self._loading.failed

    # -- clients -------------------------------------------------------------

    def connect(
        self,
        peer: P,
        ident: str,
        name: str,
        *,
        pinned: bool = False,
        grants: tuple[Grant, ...] = (),
        room: str | None = None,
        since: int | None = None,
        epoch: str | None = None,
        errors: tuple[ChatError, ...] = (),
    ) -> tuple[Member[P], str]:
        """A client arrived: its member and its welcome frame (welcome, errors
        about its URL, then its default room's join reply)."""
        member: Member[P] = Member(peer, ident, name, pinned, grants)
        member.personal = [encode_event({"type": "welcome", "id": ident, "name": name})]
        member.personal.extend(encode_event(e.event()) for e in errors)
        if room is not None:
            member.default_room = room
            if self._journal is not None and self._journal.pending:
                self._commit()  # the welcome leaves now: what it replays is kept
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
        elif isinstance(command, Typing):
            self._typing(member, command.room)
        else:
            self._nick(member, command)

    def reply(self, member: Member[P], event: dict[str, Any]) -> None:
        """Queue an event for this member only, in its next tick frame."""
        self.reply_encoded(member, encode_event(event))

    def reply_encoded(self, member: Member[P], encoded: str) -> None:
        if not member.gone:
            self._batch.personal(member).append(encoded)

    def disconnect(self, member: Member[P]) -> None:
        """The client is gone: it leaves every room, its replies are dropped."""
        for room in list(member.rooms.values()):
            self._remove(member, room)
        for name in list(member.joining or ()):
            self._loading.unwait(member, name)
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
        if self.access(member, room.name) is not Access.WRITE:
            self.reply(member, ChatError("forbidden", READ_ONLY, room.name, command.cid).event())
            return
        key = dedup_key(command.cid, member.name)
        if key is not None and not self._remote:
            original = room.history.find(key)
            if original is not None:  # a resend: the first answer, not a second message
                encoded = original.decode()
                if encoded not in room.pending:  # else it is in this tick's frame already
                    self.reply_encoded(member, encoded)
                return
        prefix, suffix = message_parts(room.name, member.name, member.id, command.text,
                                       ts_ms=int(self.clock() * 1000), cid=command.cid)
        cid = command.cid

        def failed() -> None:
            detail = "not sent: the chat backplane is unavailable; try again"
            self.reply(member, ChatError("unavailable", detail, room.name, cid).event())

        def duplicate(first: str) -> None:  # a remote backplane saw this key
            self.reply_encoded(member, first)

        self._sender = (member, cid, key)
        try:
            self.backplane.publish(room.name, prefix, suffix, failed, key=key, duplicate=duplicate)
        finally:
            self._sender = None

    def publish(
        self, name: str, sender: str, text: str, key: str | None,
        *, done: Callable[[int, str], None], failed: Callable[[], None],
    ) -> None:
        """A message from the backend (the HTTP API) as ``sender``, checked by
        the caller. ``done(seq, epoch)`` once it is durable and on its way (a
        repeated ``key`` gets the first answer and is not sent again), else
        ``failed()``. The room need not have members, here or anywhere."""
        key = dedup_key(key, _API_KEYS)
        prefix, suffix = message_parts(name, sender, API_ID, text,
                                       ts_ms=int(self.clock() * 1000), cid=None)
        if self._remote:
            self.backplane.publish(name, prefix, suffix, failed, key=key, accepted=done)
            return
        room = self._table.open(name)
        publication = Publication(room, 0, done, failed)
        original = room.history.find(key) if key is not None else None
        if original is not None:
            publication.seq = json.loads(original)["seq"]
        else:
            self._sender = (publication, None, key)  # told if the commit fails
            try:
                self.backplane.publish(name, prefix, suffix, failed)
            finally:
                self._sender = None
            publication.seq = room.seq
        self._published.append(publication)
        if not room.members:
            self._table.park(room)

    def deliver(self, name: str, seq: int, encoded: str) -> None:
        """A numbered message of a room, from the backplane (or ourselves)."""
        room = self.rooms.get(name)
        if room is None or room.loading or seq <= room.seq:
            return  # not ours, not ready (it is in what loads), or seen already
        data = encoded.encode()  # before seq moves: a failure must not leave a hole
        if seq != room.seq + 1:  # a jump: history must stay consecutive
            room.history.clear()
        room.seq = seq
        sender, cid, key = self._sender or (None, None, None)
        self._table.remember(room, data, key)
        self._batch.emit(room, encoded)
        if room.behind:
            self._loading.caught_up(room)
        if self._journal is not None:
            self._journal.message(Staged(room, seq, data, encoded, key, sender, cid))

    def _join(self, member: Member[P], command: Join) -> None:
        name = command.room
        if self.access(member, name) is Access.NONE:
            self.reply(member, ChatError("forbidden", FORBIDDEN, name).event())
            return
        if name in member.rooms or (member.joining and name in member.joining):
            self.reply(member, ChatError("already_joined", f"already in '{name}'", name).event())
            return
        limit = self.settings.max_rooms_per_client
        if len(member.rooms) + len(member.joining or ()) >= limit:
            error = ChatError("too_many_rooms", f"at most {limit} rooms at once", name)
            self.reply(member, error.event())
            return
        existing = self.rooms.get(name)
        if self._remote and (existing is None or existing.loading):
            self._loading.wait_for(member, command, existing)
            return
        if (self._remote and existing is not None and command.since is not None
                and command.epoch == existing.epoch and command.since > existing.seq):
            # Another node is ahead of this one: wait for it, do not reset.
            self._loading.wait_behind(member, command, existing, self.timer() + CATCH_UP_WAIT)
            return
        replay: list[str] = []
        if command.since is not None and existing is not None:
            replay, size = self._table.replay(existing, command.since, command.epoch)
            if member.replayed + size > self.settings.replay_budget:
                detail = "too much history at once: join again with since in a moment"
                self.reply(member, ChatError("replay_limited", detail, name).event())
                return
            member.replayed += size
        room = self._table.open(name)
        if command.since is not None and existing is None:
            replay, _ = self._table.replay(room, command.since, command.epoch)
        self._table.seat(member, room)
        joined = encode_event(person_event("join", room, member))
        self.backplane.presence(name, member.id, member.name, joined)
        self._presence.changed(room, joined, "join", member.id, member.name)
        self._batch.skip_queued(member, room)
        personal = self._batch.personal(member)
        personal.append(encoded_snapshot(room))
        personal.extend(replay)

    def _leave(self, member: Member[P], name: str) -> None:
        room = member.rooms.get(name)
        if room is None and member.joining and name in member.joining:
            self._loading.unwait(member, name)
            self.reply(member, {"type": "leave", "room": name, "id": member.id,
                                "name": member.name})
            return
        if room is None:
            self.reply(member, ChatError("not_in_room", f"not in '{name}'", name).event())
            return
        personal = self._batch.personal(member)
        start = member.skip.pop(room, 0) if member.skip else 0
        personal.extend(room.pending[start:])  # what it was here for
        personal.append(encode_event(person_event("leave", room, member)))
        self._remove(member, room)

    def _typing(self, member: Member[P], name: str) -> None:
        room = member.rooms.get(name)
        if room is None:
            self.reply(member, ChatError("not_in_room", f"join '{name}' first", name).event())
        else:
            self._typing_rule.signal(member, room)

    def access(self, member: Member[Any], room: str) -> Access:
        """What the member may do in the room (``access.room_access``), now."""
        return room_access(room, member.name if member.pinned else None, member.grants,
                           self.clock(), require_claim=self.settings.rooms_require_claim)

    def _nick(self, member: Member[P], command: Nick) -> None:
        if member.pinned:
            self.reply(member, ChatError("name_pinned", "your token fixes your name").event())
            return
        old, member.name = member.name, command.name
        member.entry = member_entry(member.id, member.name)
        for room in member.rooms.values():
            event = person_event("nick", room, member)
            event["old"] = old
            encoded = encode_event(event)
            self.backplane.presence(room.name, member.id, member.name, encoded)
            self._presence.changed(room, encoded, "nick", member.id, member.name)
        self.reply(member, {"type": "nick", "id": member.id, "name": member.name, "old": old})

    # -- rooms ---------------------------------------------------------------

    def _remove(self, member: Member[P], room: Room) -> None:
        self._table.unseat(member, room)
        self._typing_rule.left(member, room)
        if member.skip is not None:
            member.skip.pop(room, None)
        left = encode_event(person_event("leave", room, member))
        self.backplane.presence(room.name, member.id, None, left)
        self._presence.changed(room, left, "leave", member.id, member.name)
        if not room.members:
            self._emptied(room)

    def _emptied(self, room: Room) -> None:
        room.pending.clear()  # nobody to tell; the room may stay listed as active
        self._presence.emptied(room)
        if self._remote:  # history lives in the backplane: forget the room here
            self._table.drop(room)
            self.backplane.close_room(room.name)
        else:
            self._table.park(room)

    # -- the backplane's side ----------------------------------------------------


    def remote_presence(self, name: str, event: dict[str, Any]) -> None:
        """A join, leave or rename on another node."""
        room = self.rooms.get(name)
        if room is not None:
            self._presence.remote(room, event)

    def remote_signal(self, name: str, encoded: str) -> None:
        """An ephemeral event (``typing``) from another node's member."""
        self._typing_rule.remote(self.rooms.get(name), encoded)

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
        """End the tick: every frame to send, each with the peers that get it.
        With a store, the tick's messages are committed first."""
        now = self.timer()
        self._presence.update(now)
        self._table.expire(now)
        self._loading.expire(now)
        if self._journal is not None:
            self._commit()
            self._journal.maintain(now)
        if self._published:
            published, self._published = self._published, []
            for p in published:
                if p.refused:
                    p.failed()
                else:
                    p.done(p.seq, p.room.epoch)
        return self._batch.frames()

    def _commit(self) -> None:
        """Commit what was accepted; if the store fails, it is all taken back
        (as if never sent) and each sender is told to try again, with its cid."""
        assert self._journal is not None
        self._journal.commit_tick(self._batch.withdraw, self._refuse)

    def _refuse(self, entry: Staged) -> None:
        if isinstance(entry.sender, Publication):
            entry.sender.refused = True
        elif entry.sender is not None:
            detail = "not sent: the chat's store cannot write; try again"
            self.reply(entry.sender, ChatError("unavailable", detail, entry.room.name,
                                               entry.cid).event())

    def close(self) -> None:
        """Commit what is staged and close the store (the server is stopping)."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # -- reporting -----------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return self._table.stats()

    def store_status(self) -> dict[str, object]:
        """For /healthz: whether a store keeps the rooms, and if it can write."""
        if self._remote:
            return {}  # the backplane reports itself
        return {"store": "memory"} if self._journal is None else self._journal.status()

    def store_metrics(self) -> list[Metric]:
        return [] if self._journal is None else self._journal.metrics()

