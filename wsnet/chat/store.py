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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from wsnet.chat.state import Room
from wsnet.metrics import Counter, Gauge, Histogram, Metric

__all__ = ["Journal", "SavedRoom", "Staged", "Store", "StoreError"]

log = logging.getLogger("wsnet")

#: Seconds between passes that delete rows history no longer holds: each pass
#: stays small (about 3 ms for 2,000 msg/s of deletions, measured), and the
#: file near its budget.
PRUNE_INTERVAL = 1.0
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
        fresh: Iterable[tuple[str, str, int]],
        messages: Iterable[tuple[str, int, bytes, str | None]],
    ) -> None:
        """Rooms made anew, as ``(name, epoch, seq)`` (an older incarnation's
        messages go), and ``(room, seq, event, key)`` messages. The room rows
        are not rewritten per message: a room's ``seq`` is its newest message's
        (or its row's, once ``prune`` has run). Raises ``StoreError``."""
        ...

    def prune(self, rooms: Iterable[tuple[str, int, int]], forget: Iterable[str]) -> None:
        """For each ``(room, first kept seq, seq)`` record ``seq`` in the room's
        row and delete the messages below the first kept; delete forgotten rooms
        entirely; give freed pages back. Raises ``StoreError``."""
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
    #: Rooms made anew since the last commit: their rows are written, and the
    #: messages of an older incarnation go.
    fresh: dict[str, Room] = field(default_factory=dict)
    #: Rooms written since the last prune (their old rows may go), and rooms forgotten.
    written: dict[str, Room] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)
    healthy: bool = True
    next_prune: float = 0.0
    #: How long each tick's commit holds the loop: it must stay short.
    commit_seconds: Histogram = field(default_factory=lambda: Histogram(
        "wsnet_chat_store_commit_seconds",
        "Time of one tick's commit to the chat store (on the loop thread).",
        (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
    ))
    refused: Counter = field(default_factory=lambda: Counter(
        "wsnet_chat_store_refused_total",
        "Messages refused ('unavailable') because the store could not write them.",
    ))

    def room_made(self, room: Room) -> None:
        self.fresh[room.name] = room
        self.forgotten.discard(room.name)

    def room_forgotten(self, name: str) -> None:
        self.written.pop(name, None)
        self.fresh.pop(name, None)
        self.forgotten.add(name)

    def message(self, entry: Staged) -> None:
        self.staged.append(entry)

    @property
    def pending(self) -> bool:
        return bool(self.staged or self.fresh)

    def commit(self) -> list[Staged]:
        """Write this tick in one transaction. Returns what could not be
        written (everything staged, on failure), for the caller to take back;
        new rooms' rows wait for the next commit."""
        if not self.pending:
            return []
        staged = self.staged
        started = time.perf_counter()
        try:
            self.store.write(
                ((r.name, r.epoch, r.seq) for r in self.fresh.values()),
                ((s.room.name, s.seq, s.data, s.key) for s in staged),
            )
        except StoreError as exc:
            self.staged = []
            self.refused.inc(len(staged))
            if self.healthy:
                self.healthy = False
                log.error("store: cannot write (%s): messages are refused until it can", exc)
            return staged
        self.commit_seconds.observe(time.perf_counter() - started)
        if not self.healthy:
            self.healthy = True
            log.warning("store: writing again; messages are accepted")
        for entry in staged:
            self.written[entry.room.name] = entry.room
        self.staged = []
        self.fresh.clear()
        return []

    def commit_tick(self, withdraw: Callable[[set[str]], None],
                    refuse: Callable[[Staged], None]) -> None:
        """``commit``, and if it fails take the tick back: each room's numbering
        and history as before, the queued events withdrawn (``withdraw``), and
        each sender told (``refuse``)."""
        failed = self.commit()
        if not failed:
            return
        for entry in reversed(failed):
            room = entry.room
            if room.history.last_seq == entry.seq:
                room.history.pop_newest()
            room.seq = min(room.seq, entry.seq - 1)
        withdraw({entry.encoded for entry in failed})
        for entry in failed:
            refuse(entry)

    def status(self) -> dict[str, object]:
        return {"store": "ok" if self.healthy else "failing"}

    def maintain(self, now: float) -> None:
        """Every ``PRUNE_INTERVAL``, delete what history no longer holds, a
        batch of rooms at a time."""
        if now < self.next_prune or not (self.written or self.forgotten):
            return
        self.next_prune = now + PRUNE_INTERVAL
        rooms = list(self.written.values())[:PRUNE_BATCH]
        gone = list(self.forgotten)[:PRUNE_BATCH]
        try:
            self.store.prune(((r.name, r.first_seq, r.seq) for r in rooms), gone)
        except StoreError as exc:
            log.warning("store: pruning failed (%s); trying again in %g s", exc, PRUNE_INTERVAL)
            return
        for room in rooms:
            self.written.pop(room.name, None)
        self.forgotten.difference_update(gone)

    def metrics(self) -> list[Metric]:
        healthy = Gauge("wsnet_chat_store_healthy", "1 if the chat store's last commit worked.")
        healthy.set(int(self.healthy))
        return [self.commit_seconds, self.refused, healthy]

    def close(self) -> None:
        self.commit()
        self.store.close()
