"""Who is in a room, as its members hear it: a member list, or a count.

Up to ``presence_limit`` members, a room's members hear each join, leave and
rename and get the full list on joining. Past it, the room switches to a count,
sent at most once per ``count_interval`` (a room of thousands would otherwise
spend its frames on presence), and in a room so large that this would be more
than ``count_frames`` frames a second, less often; back to the list once it is
small again.

A list-mode room whose presence events would cost more than
``presence_storm_frames`` frames in a second (each change is a frame to every
local member: everyone reconnecting after a restart) hears its changes as one
``presence_diff`` per ``presence_diff_interval`` instead, as Phoenix does: a
frame per member per interval rather than one per member per join. After an
interval whose changes would have cost at most that many frames it goes back to
single events. A small room keeps single events through ordinary churn; a room
of 100 switches at a few changes a second. All rooms switch while the worker's
changes together cost more than ``presence_storm_total_frames`` a second (many
rooms, each with a join a second, as when 100,000 connect), and then their diffs
are spaced out so that they too cost at most that.
``Presence`` keeps these switches in one place for local and remote changes. Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsnet.chat.batch import Batch
from wsnet.chat.protocol import encode_event, member_entry
from wsnet.chat.settings import ChatSettings
from wsnet.chat.state import Member, PresenceDiff, Room

__all__ = ["Presence", "count_event", "encoded_snapshot", "person_event", "snapshot_event"]


def person_event(kind: str, room: Room, member: Member[Any]) -> dict[str, Any]:
    """A ``join``, ``leave`` or ``nick`` event about one member."""
    return {"type": kind, "room": room.name, "id": member.id, "name": member.name}


def count_event(room: Room) -> dict[str, Any]:
    return {"type": "presence", "room": room.name, "count": room.size}


def _snapshot_head(room: Room, numbering: bool) -> dict[str, Any]:
    head: dict[str, Any] = {"type": "presence", "room": room.name}
    if numbering:
        head["epoch"], head["seq"] = room.epoch, room.seq
    head["count"] = room.size
    return head


def snapshot_event(room: Room, numbering: bool = True) -> dict[str, Any]:
    """The room as a joiner sees it: its numbering (``epoch``, ``seq``, unless
    only presence changed), its size and, unless counting, its members."""
    snapshot = _snapshot_head(room, numbering)
    if not room.counting:
        snapshot["members"] = [{"id": m.id, "name": m.name} for m in room.members]
        snapshot["members"] += [{"id": i, "name": n} for i, n in room.remote.items()]
    return snapshot


def encoded_snapshot(room: Room, numbering: bool = True) -> str:
    """``snapshot_event`` encoded, its member list joined from the members'
    ``entry`` strings: for a room of 100, a join of strings instead of a
    hundred dicts through the JSON encoder for every joiner."""
    head = encode_event(_snapshot_head(room, numbering))
    if room.counting:
        return head
    entries = [m.entry for m in room.members]
    entries += [member_entry(i, n) for i, n in room.remote.items()]
    return f'{head[:-1]},"members":[{",".join(entries)}]}}'


class Presence:
    """Presence events into the batch, and the counting rooms' pending counts."""

    def __init__(self, settings: ChatSettings, timer: Callable[[], float], batch: Batch[Any]):
        self._limit = settings.presence_limit
        self._interval = settings.count_interval
        self._count_frames = settings.count_frames
        self._timer = timer
        self._batch = batch
        self._counts: set[Room] = set()  # counting rooms whose count changed
        self._storm = settings.presence_storm_frames
        self._diff_interval = settings.presence_diff_interval
        self._diffs: set[Room] = set()  # rooms in a storm, gathering a diff
        self._storm_total = settings.presence_storm_total_frames
        self._all_since = float("-inf")  # this worker's one-second window...
        self._all_frames = 0  # ...and what its presence changes cost in it
        self._all_last = 0  # ...and in the window before (0 if long ago)

    def changed(self, room: Room, encoded: str, kind: str, ident: str, name: str) -> None:
        """A ``join``, ``leave`` or ``nick`` (``encoded``): members hear the
        event, or during a storm the next diff, or past the limit the new count
        at its next due time."""
        if room.counting:
            if kind != "nick":
                self._counts.add(room)
        elif room.size > self._limit:
            room.counting = True
            self._end_storm(room)
            self._batch.emit(room, encode_event(count_event(room)))
            room.count_due = self._next_count(room, self._timer())
        elif room.diff is not None:
            self._count_all(len(room.members), self._timer())
            room.diff.add(kind, ident, name, len(room.members))
        elif self._stormy(room):
            self._diffs.add(room)
            now = self._timer()
            room.diff = PresenceDiff(now + self._diff_spacing(now))
            room.diff.add(kind, ident, name, len(room.members))
        else:
            self._batch.emit(room, encoded)

    def _next_count(self, room: Room, now: float) -> float:
        """When the room's members may next hear its count: a count is a frame
        to each local member, so a larger room waits longer."""
        return now + max(self._interval, len(room.members) / self._count_frames)

    def _stormy(self, room: Room) -> bool:
        """Counts this change's frames (one per local member); True once the
        room's changes cost more than ``presence_storm_frames`` in its current
        one-second window."""
        if not self._storm:
            return False
        now = self._timer()
        if now - room.storm_since >= 1.0:
            room.storm_since, room.storm_frames = now, 0
        room.storm_frames += len(room.members)
        self._count_all(len(room.members), now)
        return room.storm_frames > self._storm or self._busy(now)

    def _count_all(self, frames: int, now: float) -> None:
        """Adds a change's frames to the worker's window (as single events,
        whether or not its room is in a storm)."""
        if now - self._all_since >= 1.0:
            self._all_last = self._all_frames if now - self._all_since < 2.0 else 0
            self._all_since, self._all_frames = now, 0
        self._all_frames += frames

    def _busy(self, now: float) -> bool:
        """True while all rooms' changes cost more than
        ``presence_storm_total_frames`` in the current or the last second."""
        if not self._storm_total or now - self._all_since >= 2.0:
            return False
        return max(self._all_frames, self._all_last) > self._storm_total

    def _diff_spacing(self, now: float) -> float:
        """``presence_diff_interval``, or while the worker is busy long enough
        that all its storming rooms' diffs (a frame per local member each) stay
        within ``presence_storm_total_frames`` a second: 17,000 members hearing
        a diff every 1.5 s would be 11,000 frames a second, twice the limit."""
        if not self._busy(now):
            return self._diff_interval
        members = sum(len(r.members) for r in self._diffs)
        return max(self._diff_interval, members / self._storm_total)

    def _end_storm(self, room: Room) -> None:
        room.diff = None
        self._diffs.discard(room)

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
        self.changed(room, encode_event({**event, "room": room.name}), kind, ident, name)

    def emptied(self, room: Room) -> None:
        room.counting = False
        self._counts.discard(room)
        self._end_storm(room)

    def update(self, now: float) -> None:
        """Send each storm's diff when due, and tell each counting room its new
        size, at most once per interval; a room back under the limit gets its
        member list again."""
        due = [r for r in self._diffs if r.diff is not None and now >= r.diff.due]
        spacing = self._diff_spacing(now) if due else 0.0
        for room in due:
            diff = room.diff
            assert diff is not None
            event = diff.event(room)
            if event is not None:
                self._batch.emit(room, encode_event(event))
            if diff.frames > self._storm or self._busy(now):  # still a storm: the next diff
                room.diff = PresenceDiff(now + spacing)
            else:
                self._end_storm(room)
                room.storm_since, room.storm_frames = now, 0
        for room in [r for r in self._counts if now >= r.count_due]:
            self._counts.discard(room)
            room.count_due = self._next_count(room, now)
            if room.size <= self._limit:
                room.counting = False
                encoded = encoded_snapshot(room, numbering=False)
            else:
                encoded = encode_event(count_event(room))
            self._batch.emit(room, encoded)
