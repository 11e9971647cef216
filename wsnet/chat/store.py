"""Where a single node's rooms outlive the process: the ``Store`` protocol, and
``Journal``, the per-tick staging that decides what a store is asked to do.

A store holds, per room, its epoch, its last ``seq`` and the messages its
history keeps. The rooms in memory (``table.RoomTable``) stay the truth for
reads; the store is their durable copy, written once per tick before that
tick's frames leave (so nothing a client sees can be taken back by a crash),
and read back at start. ``Journal`` is the store's logic without the store:
what was accepted this tick, which rooms were made or forgotten, when old rows
are pruned, and whether the store is healthy. ``wsnet.chat.sqlite`` is the
store. ARCHITECTURE.md, "Durable history", has the whole story.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from wsnet.chat.state import Room

__all__ = ["Journal", "SavedRoom", "Staged", "Store", "StoreError"]

log = logging.getLogger("wsnet")

#: Seconds between passes that delete rows history no longer holds: often
#: enough that the file stays near its budget, rarely enough to cost nothing.
PRUNE_INTERVAL = 5.0
#: Rooms one pruning pass handles: the pass stays short on the loop thread;
#: the rest wait for the next one.
PRUNE_BATCH = 500


class StoreError(Exception):
    """A store could not do what it was asked (disk full, read-only, I/O error)."""


class SavedRoom(NamedTuple):
    name: str
    epoch: str
    seq: int
    #: ``(seq, event, dedup key)``, oldest first.
    messages: list[tuple[int, bytes, str | None]]


class Store(Protocol):
    """A durable copy of the rooms. Every call is one transaction."""

    def load(self) -> list[SavedRoom]: ...

    def write(
        self,
        rooms: Iterable[tuple[str, str, int]],
        fresh: Iterable[str],
        messages: Iterable[tuple[str, int, bytes, str | None]],
    ) -> None:
        """Upsert ``(name, epoch, seq)`` rows, delete the old messages of rooms
        made anew (``fresh``), insert messages. Raises ``StoreError``."""
        ...

    def prune(self, keep_from: Iterable[tuple[str, int]], forget: Iterable[str]) -> None:
        """Delete each room's messages below its first kept ``seq``, and the
        forgotten rooms entirely; then give freed pages back. Raises ``StoreError``."""
        ...

    def close(self) -> None: ...


@dataclass(slots=True)
class Staged:
    """A message accepted this tick and not yet committed."""

    room: Room
    seq: int
    data: bytes
    encoded: str
    key: str | None
    #: Who sent it, and its ``cid``, to tell if the commit fails.
    sender: Any = None
    cid: str | None = None


@dataclass
class Journal:
    """What this tick changed, until ``commit``; and when to prune."""

    store: Store
    timer: Callable[[], float]
    staged: list[Staged] = field(default_factory=list)
    #: Rooms whose ``(epoch, seq)`` row must be written.
    touched: dict[str, Room] = field(default_factory=dict)
    #: Rooms made anew since the last commit: rows of an older incarnation go.
    fresh: set[str] = field(default_factory=set)
    #: Rooms written since the last prune (their old rows may go), and rooms forgotten.
    written: dict[str, Room] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)
    healthy: bool = True
    next_prune: float = 0.0

    def room_made(self, room: Room) -> None:
        self.touched[room.name] = room
        self.fresh.add(room.name)
        self.forgotten.discard(room.name)

    def room_forgotten(self, name: str) -> None:
        self.touched.pop(name, None)
        self.written.pop(name, None)
        self.fresh.discard(name)
        self.forgotten.add(name)

    def message(self, entry: Staged) -> None:
        self.staged.append(entry)
        self.touched[entry.room.name] = entry.room

    @property
    def pending(self) -> bool:
        return bool(self.staged or self.touched)

    def commit(self) -> list[Staged]:
        """Write this tick in one transaction. Returns what could not be
        written (everything staged, on failure), for the caller to take back;
        rooms' rows stay touched and are written with the next commit."""
        if not self.pending:
            return []
        staged = self.staged
        try:
            self.store.write(
                ((r.name, r.epoch, r.seq) for r in self.touched.values()),
                self.fresh,
                ((s.room.name, s.seq, s.data, s.key) for s in staged),
            )
        except StoreError as exc:
            self.staged = []
            if self.healthy:
                self.healthy = False
                log.error("store: cannot write (%s): messages are refused until it can", exc)
            return staged
        if not self.healthy:
            self.healthy = True
            log.warning("store: writing again; messages are accepted")
        for entry in staged:
            self.written[entry.room.name] = entry.room
        self.staged = []
        self.touched.clear()
        self.fresh.clear()
        return []

    def maintain(self, now: float) -> None:
        """Every ``PRUNE_INTERVAL``, delete what history no longer holds, a
        batch of rooms at a time."""
        if now < self.next_prune or not (self.written or self.forgotten):
            return
        self.next_prune = now + PRUNE_INTERVAL
        rooms = list(self.written.values())[:PRUNE_BATCH]
        gone = list(self.forgotten)[:PRUNE_BATCH]
        try:
            self.store.prune(((r.name, r.first_seq) for r in rooms), gone)
        except StoreError as exc:
            log.warning("store: pruning failed (%s); trying again in %g s", exc, PRUNE_INTERVAL)
            return
        for room in rooms:
            self.written.pop(room.name, None)
        self.forgotten.difference_update(gone)

    def close(self) -> None:
        self.commit()
        self.store.close()
