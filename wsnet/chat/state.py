"""The chat's records: a connected ``Member`` and a ``Room``.

Plain slotted records that ``Chat`` (the rules) and ``Batch`` (the framing)
both read and write; neither holds behaviour of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from wsnet.chat.history import History, Ledger
from wsnet.chat.protocol import Join, member_entry
from wsnet.tokens import Grant

__all__ = ["Member", "PresenceDiff", "Publication", "Room"]

P = TypeVar("P")


class Member(Generic[P]):
    """One connected client as the chat sees it."""

    __slots__ = ("peer", "id", "name", "entry", "pinned", "grants", "default_room", "rooms",
                 "personal", "skip", "stamp", "replayed", "joining", "typed", "gone")

    def __init__(
        self, peer: P, ident: str, name: str, pinned: bool, grants: tuple[Grant, ...] = (),
    ) -> None:
        self.peer = peer
        self.id = ident
        self.name = name
        #: ``member_entry(id, name)``, kept with the name: a room's member list
        #: is joined from these instead of encoded afresh for every joiner.
        self.entry = member_entry(ident, name)
        #: The name came from an auth token and cannot change.
        self.pinned = pinned
        #: The rooms its token grants (``access.room_access``).
        self.grants = grants
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
        #: Room -> when its last ``typing`` went out (None: never), for the cap.
        self.typed: dict[str, float] | None = None
        self.gone = False  # disconnected: late answers are dropped

    def __repr__(self) -> str:
        return f"<Member {self.id} {self.name!r} in {len(self.rooms)} rooms>"


class Publication:
    """A message from the backend (the HTTP API) waiting for its answer: the
    end of the tick, when it is committed (or taken back)."""

    __slots__ = ("room", "seq", "done", "failed", "refused")

    def __init__(
        self, room: Room, seq: int, done: Callable[[int, str], None], failed: Callable[[], None],
    ) -> None:
        self.room = room
        self.seq = seq
        self.done = done
        self.failed = failed
        self.refused = False


class PresenceDiff:
    """A presence storm's changes in one room since its last ``presence_diff``:
    who joined (or was renamed: ``joined`` is an upsert by id) and who left.
    An id is in at most one of the two, so a client may apply them in any
    order; a member that joined and left within one diff is in neither."""

    __slots__ = ("joined", "left", "fresh", "frames", "due")

    def __init__(self, due: float) -> None:
        self.joined: dict[str, str] = {}
        self.left: dict[str, None] = {}  # an ordered set
        self.fresh: set[str] = set()  # joined within this diff: nobody heard of them yet
        self.frames = 0  # what its changes would have cost as single events
        self.due = due

    def add(self, kind: str, ident: str, name: str, frames: int) -> None:
        self.frames += frames
        if kind == "leave":
            self.joined.pop(ident, None)
            if ident in self.fresh:
                self.fresh.discard(ident)
            else:
                self.left[ident] = None
            return
        if kind == "join":
            if ident in self.left:  # known before this diff: it is back
                del self.left[ident]
            else:
                self.fresh.add(ident)
        self.joined[ident] = name

    def event(self, room: Room) -> dict[str, Any] | None:
        """The ``presence_diff`` to send, or None if the changes cancelled out."""
        if not self.joined and not self.left:
            return None
        return {"type": "presence_diff", "room": room.name, "count": room.size,
                "joined": [{"id": i, "name": n} for i, n in self.joined.items()],
                "left": list(self.left)}


class Room:
    """Members, the message sequence, history, and the tick's queued events."""

    __slots__ = ("name", "order", "epoch", "seq", "members", "multi", "pending", "history",
                 "counting", "count_due", "remote", "loading", "waiting", "behind",
                 "storm_frames", "storm_since", "diff")

    def __init__(self, name: str, order: int, epoch: str, ledger: Ledger) -> None:
        self.name = name
        self.order = order  # creation order: sorts rooms the same way for everyone
        #: Names this incarnation of the room's ``seq`` numbering.
        self.epoch = epoch
        self.seq = 0
        #: Member -> its peer, in join order: ``values()`` is a ready recipient list.
        self.members: dict[Member[Any], Any] = {}
        #: How many members are in other rooms too (they need a frame per room set).
        self.multi = 0
        #: This tick's events, encoded, in order.
        self.pending: list[str] = []
        self.history = History(ledger)
        #: Presence is a count, not a member list (more than presence_limit members).
        self.counting = False
        self.count_due = 0.0  # when its members may next hear the count
        #: Members on other nodes (backplane): id -> name.
        self.remote: dict[str, str] = {}
        #: Its state is being fetched from the backplane; ``waiting`` join it then.
        self.loading = False
        self.waiting: list[Member[Any]] = []
        #: Members resuming past this node's ``seq`` in the same epoch (another
        #: node is ahead): they join once it has caught up, by the deadline.
        self.behind: list[tuple[Member[Any], float]] = []
        #: The frames its presence events cost since ``storm_since`` (a
        #: one-second window), and, during a storm, the changes gathered for the
        #: next ``presence_diff``.
        self.storm_frames = 0
        self.storm_since = 0.0
        self.diff: PresenceDiff | None = None

    @property
    def size(self) -> int:
        return len(self.members) + len(self.remote)

    @property
    def first_seq(self) -> int:
        """The oldest ``seq`` history can replay (``seq + 1`` if none)."""
        return self.history.first_seq(self.seq + 1)

    def __repr__(self) -> str:
        return f"<Room {self.name!r} seq={self.seq} members={len(self.members)}>"
