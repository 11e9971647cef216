"""What rooms keep for replay, within three budgets.

Each room's ``History`` holds consecutive ``(seq, event as UTF-8)`` entries:
bytes, so that what is counted is what is held. A room keeps at most
``history`` entries and ``history_bytes`` bytes; all rooms together share one
``Ledger`` of ``history_total_bytes``, and a room that pushes the total over it
keeps less (the chat first forgets idle rooms, see ``Chat``). Pure.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from itertools import islice

__all__ = ["History", "Ledger"]


class Ledger:
    """The limits, and the bytes every room's history holds together."""

    __slots__ = ("entries", "room_bytes", "total_bytes", "total")

    def __init__(self, entries: int, room_bytes: int, total_bytes: int) -> None:
        self.entries = entries
        self.room_bytes = room_bytes
        self.total_bytes = total_bytes
        self.total = 0

    @property
    def over(self) -> bool:
        return self.total > self.total_bytes


class History:
    """One room's replayable messages, oldest first, with consecutive seqs."""

    __slots__ = ("_entries", "bytes", "_ledger")

    def __init__(self, ledger: Ledger) -> None:
        self._entries: deque[tuple[int, bytes]] = deque()
        self.bytes = 0
        self._ledger = ledger

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        return iter(self._entries)

    def first_seq(self, default: int) -> int:
        """The oldest ``seq`` kept, or ``default`` if none is."""
        return self._entries[0][0] if self._entries else default

    def append(self, seq: int, data: bytes) -> None:
        """Keep one more; ``seq`` must follow the last (or the history be empty).
        Call ``trim`` after making room elsewhere."""
        self._entries.append((seq, data))
        self.bytes += len(data)
        self._ledger.total += len(data)

    def trim(self) -> None:
        """Drop the oldest until this room is within its limits and, while the
        total is over, down to its newest entry."""
        entries, ledger = self._entries, self._ledger
        while entries and (
            len(entries) > ledger.entries
            or self.bytes > ledger.room_bytes
            or (ledger.over and len(entries) > 1)
        ):
            size = len(entries.popleft()[1])
            self.bytes -= size
            ledger.total -= size

    def clear(self) -> None:
        """Forget everything (the numbering jumped, or the room is forgotten)."""
        self._ledger.total -= self.bytes
        self._entries.clear()
        self.bytes = 0

    def after(self, seq: int) -> Iterator[bytes]:
        """The events after ``seq`` that are kept, oldest first. The seqs are
        consecutive, so where ``seq + 1`` sits is arithmetic."""
        if not self._entries:
            return iter(())
        start = max(0, seq + 1 - self._entries[0][0])
        return (data for _, data in islice(self._entries, start, None))
