"""Connections' timeouts, one FIFO per delay, without an object per arm.

A connection's timeouts each take one of a few fixed delays (the handshake,
the ping interval, the wait for a pong, the closing handshake), so the items
armed with one delay fall due in the order they were armed: a deque per delay is
a priority queue with O(1) arm and pop. Arming stores the due time on the item
and appends it, creating nothing the cyclic collector tracks. A ``Timer`` per
arm, with its callback and heap entry, was four such objects: the keepalives of
19,000 connections kept some 70,000 of them alive in the young generations, and
each collection of those took 160 ms, a stall every client saw.

Re-arming or cancelling leaves the old entry in its queue; it is known to be
stale when it reaches the front, as its due time is no longer the item's. A
queue therefore holds at most what was armed with its delay within that delay.
Nothing here reads a clock: callers pass ``now``.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar

__all__ = ["Deadlines", "Expiring"]


class Expiring(Protocol):
    """What ``Deadlines`` keeps its state in: the item's own due time."""

    deadline: float | None


T = TypeVar("T", bound=Expiring)


class Deadlines(Generic[T]):
    """The items' single deadlines (an item has at most one at a time)."""

    __slots__ = ("_queues",)

    def __init__(self) -> None:
        #: delay -> (due times, items), in the order armed.
        self._queues: dict[float, tuple[deque[float], deque[T]]] = {}

    def arm(self, item: T, now: float, delay: float) -> float:
        """Make ``item`` due at ``now + delay`` (replacing its earlier
        deadline); returns that time."""
        due = now + delay
        item.deadline = due
        queue = self._queues.get(delay)
        if queue is None:
            queue = self._queues[delay] = (deque(), deque())
        queue[0].append(due)
        queue[1].append(item)
        return due

    @staticmethod
    def cancel(item: T) -> None:
        """``item`` has no deadline any more (its entry goes stale)."""
        item.deadline = None

    def next_due(self) -> float | None:
        """The earliest live deadline, or None; stale fronts are dropped."""
        earliest: float | None = None
        for delay, (dues, items) in list(self._queues.items()):
            while dues and items[0].deadline != dues[0]:
                dues.popleft()
                items.popleft()
            if not dues:
                del self._queues[delay]
            elif earliest is None or dues[0] < earliest:
                earliest = dues[0]
        return earliest

    def pop_due(self, now: float) -> list[T]:
        """Remove and return the items due at ``now``, each queue in the order
        armed (not across queues: an item has only one deadline). Their
        deadlines are cleared first, so an action may arm the item again; what
        it arms for ``now`` or earlier waits for the next call."""
        due: list[T] = []
        for dues, items in list(self._queues.values()):
            while dues and dues[0] <= now:
                when = dues.popleft()
                item = items.popleft()
                if item.deadline == when:
                    item.deadline = None
                    due.append(item)
        return due

    def __len__(self) -> int:
        """Entries queued, stale ones included (what memory holds)."""
        return sum(len(dues) for dues, _ in self._queues.values())
