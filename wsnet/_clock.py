"""Deadlines for a single-threaded loop: a heap with lazy cancellation.

Cancelling marks the entry dead instead of searching the heap for it; dead
entries are skipped when they reach the top, and the heap is rebuilt when they
outnumber the live ones, so memory follows the live timers. Nothing here reads a
clock: callers pass ``now``, which keeps this testable with a fake clock.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

__all__ = ["Timer", "TimerHandle", "Timers", "next_tick"]


class Timer:
    """One scheduled call; cancel it with ``Timers.cancel`` (O(1), forgotten lazily)."""

    __slots__ = ("when", "callback", "cancelled", "queued")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False
        self.queued = True  # still in the heap


class TimerHandle:
    """A call scheduled with ``Server.call_later``: ``cancel()`` stops it.

    Cancelling after the call ran, or twice, does nothing. Applications get this
    rather than the heap's own ``Timer`` so that the loop's bookkeeping fields
    stay out of the public API.
    """

    __slots__ = ("_timers", "_timer")

    def __init__(self, timers: Timers, timer: Timer) -> None:
        self._timers = timers
        self._timer = timer

    @property
    def when(self) -> float:
        """The loop-clock time the call is due at."""
        return self._timer.when

    def cancel(self) -> None:
        self._timers.cancel(self._timer)

    def __repr__(self) -> str:
        state = "done" if self._timer.cancelled else "pending"
        return f"<TimerHandle when={self._timer.when:.3f} {state}>"


class Timers:
    """A min-heap of Timers ordered by deadline, ties by insertion order."""

    __slots__ = ("_heap", "_seq", "_dead")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        self._dead = 0

    def __len__(self) -> int:
        return len(self._heap) - self._dead

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        timer = Timer(when, callback)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, timer))
        return timer

    def cancel(self, timer: Timer | None) -> None:
        """Cancel a timer this heap holds (None and repeats are no-ops)."""
        if timer is None or timer.cancelled:
            return
        timer.cancelled = True
        if not timer.queued:
            return  # already popped: it just must not run
        self._dead += 1
        if self._dead > 64 and self._dead * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._dead = 0

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[Timer]:
        """Remove and return the live timers due at ``now``, earliest first.

        Timers scheduled by their own callbacks for ``now`` or earlier wait for the
        next call, so a callback that re-arms itself cannot starve the loop. A
        popped timer can still be cancelled (by an earlier callback of the same
        batch): check ``cancelled`` before running it, as ``run_due`` does.
        """
        heap = self._heap
        due: list[Timer] = []
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            timer.queued = False
            if timer.cancelled:
                self._dead -= 1
            else:
                due.append(timer)
        return due

    def run_due(self, now: float, on_error: Callable[[BaseException], object]) -> None:
        """Run the timers due at ``now``; one failing does not stop the others."""
        for timer in self.pop_due(now):
            if timer.cancelled:
                continue
            timer.cancelled = True  # it ran: cancelling it later is a no-op
            try:
                timer.callback()
            except Exception as exc:
                on_error(exc)


def next_tick(origin: float, period: float, now: float) -> float:
    """The first point of the grid ``origin + k * period`` strictly after ``now``.

    Ticks stay on the grid however late a turn runs (no drift), and missed ticks
    are skipped rather than fired in a burst.
    """
    k = math.floor((now - origin) / period) + 1
    when = origin + k * period
    while when <= now:  # the division can round down onto ``now`` itself
        k += 1
        when = origin + k * period
    return when
