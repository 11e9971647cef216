"""Which worker should hold a connection (``--workers``): affinity by key.

A room whose members all live in one worker is received from Redis, batched
and encoded once; spread over N workers by the kernel, it costs all of that N
times (and Redis sends every message N times). So the worker that accepted an
upgrade asks the application for the connection's key (``Handler.affinity``:
the chat's room in the URL), and when another worker owns that key, the
reactor hands the socket over with the bytes read so far (``_reactor``'s
``Handoff``: SCM_RIGHTS over Unix socket pairs the supervisor made). The owner
reads the request again as if it had accepted it.

Ownership is a hash of the key over the worker slots, bounded by load: a
worker that already holds more than its share (``OVER_MEAN`` of the node's
mean, plus ``SLACK``) gets nothing more, and the accepting worker keeps the
connection. So one huge room (everyone in the lobby) still spreads over every
worker, rooms that hash unevenly spill over a little, and the backplane keeps
any room correct wherever its members are.

The load board is a small file in the node's directory, mapped by every
worker: one slot per worker with its socket count and when it last wrote it
(``time.monotonic``: one clock for the whole machine on Linux). A slot not
written for ``STALE_AFTER`` (a worker stopped, stuck, crashed or draining)
gets nothing; what was already handed to it waits in its socket pair, which
the supervisor holds open, for the worker's replacement.

``owner`` and ``choose`` are the policy, pure functions tested on their own;
``LoadBoard`` only reads and writes the file.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
import zlib
from collections.abc import Sequence

__all__ = ["BOARD_FILE", "OVER_MEAN", "SLACK", "STALE_AFTER", "LoadBoard", "choose", "owner"]

#: The board's name in the node's directory (``--node-dir``).
BOARD_FILE = "placement"

#: A worker takes others' connections only while it holds at most this much more
#: than the node's mean: at 100,000 connections over 6 workers, 18,300 each at
#: most, under the ~20,000 descriptors a process may hold here...
OVER_MEAN = 1.10
#: ...plus this many: headroom for a burst between two writes of the board.
SLACK = 64
#: A slot older than this receives nothing (its worker writes every tick, 50 ms).
STALE_AFTER = 1.0

_SLOT = struct.Struct("=qd")  # sockets held; monotonic time of the write (0: gone)

Load = tuple[int, float]  # (sockets held, when written)


def owner(key: str, workers: int) -> int:
    """The slot (1..workers) that owns ``key``: the same in every worker and
    after every restart (crc32, not ``hash``, which is salted per process)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % workers + 1


def choose(key: str, me: int, loads: Sequence[Load], now: float) -> int | None:
    """The slot to hand a connection with ``key`` to, or None to keep it here
    (it is ours, or its owner is gone or already holds more than its share)."""
    slot = owner(key, len(loads))
    if slot == me:
        return None
    held, written = loads[slot - 1]
    if now - written > STALE_AFTER:
        return None
    live = [h for h, w in loads if now - w <= STALE_AFTER]
    mean = sum(live) / len(live)
    if held > mean * OVER_MEAN + SLACK:
        return None
    return slot


class LoadBoard:
    """The node's file of worker loads, mapped into this worker (slot ``me``)."""

    def __init__(self, path: str, workers: int, me: int) -> None:
        if not 1 <= me <= workers:
            raise ValueError(f"slot {me} is not one of 1..{workers}")
        self.workers = workers
        self.me = me
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, workers * _SLOT.size)
        finally:
            os.close(fd)

    @staticmethod
    def create(path: str, workers: int) -> None:
        """The supervisor's part: a board with every slot gone."""
        with open(path, "wb") as f:
            f.write(bytes(workers * _SLOT.size))

    def write(self, held: int, now: float | None = None) -> None:
        _SLOT.pack_into(self._map, (self.me - 1) * _SLOT.size, held,
                        time.monotonic() if now is None else now)

    def leave(self) -> None:
        """This worker takes nothing more (it drains or stops)."""
        _SLOT.pack_into(self._map, (self.me - 1) * _SLOT.size, 0, 0.0)

    def read(self) -> list[Load]:
        return [_SLOT.unpack_from(self._map, i * _SLOT.size) for i in range(self.workers)]

    def target(self, key: str) -> int | None:
        """``choose`` on the board as it is now."""
        return choose(key, self.me, self.read(), time.monotonic())

    def close(self) -> None:
        self._map.close()
