"""What rooms keep for replay, within three budgets.

Each room's ``History`` holds consecutive ``(seq, event as UTF-8, key)``
entries: bytes, so that what is counted is what is held. ``key`` names the
sender's ``cid`` (``dedup_key``): while a message is held, a resend of it is
found by its key instead of being published twice. A room keeps at most
``history`` entries and ``history_bytes`` bytes; all rooms together share one
``Ledger`` of ``history_total_bytes``, and a room that pushes the total over it
keeps less (the chat first forgets idle rooms, see ``Chat``). Pure.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from itertools import islice

__all__ = ["History", "Ledger", "dedup_key"]


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


def dedup_key(cid: str | None, sender: str) -> str | None:
    """What makes a resend the same message: the same ``cid`` from the same
    sender name (with tokens, the token's name). The name is part of the key even
    without tokens, so that two clients that happen to pick the same ``cid`` do
    not swallow each other's messages; the page keeps its name across reconnects."""
    if cid is None:
        return None
    return f"{sender}\x1f{cid}"


class History:
    """One room's replayable messages, oldest first, with consecutive seqs."""

    __slots__ = ("_entries", "bytes", "_ledger", "_keys")

    def __init__(self, ledger: Ledger) -> None:
        self._entries: deque[tuple[int, bytes, str | None]] = deque()
        self.bytes = 0
        self._ledger = ledger
        #: Dedup key -> the seq of the message held with it.
        self._keys: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        return ((seq, data) for seq, data, _ in self._entries)

    def first_seq(self, default: int) -> int:
        """The oldest ``seq`` kept, or ``default`` if none is."""
        return self._entries[0][0] if self._entries else default

    @property
    def last_seq(self) -> int | None:
        return self._entries[-1][0] if self._entries else None

    def append(self, seq: int, data: bytes, key: str | None = None) -> None:
        """Keep one more; ``seq`` must follow the last (or the history be empty).
        Call ``trim`` after making room elsewhere."""
        self._entries.append((seq, data, key))
        self.bytes += len(data)
        self._ledger.total += len(data)
        if key is not None:
            self._keys[key] = seq

    def find(self, key: str) -> bytes | None:
        """The message held under this dedup key, if it is still held."""
        seq = self._keys.get(key)
        if seq is None:
            return None
        return self._entries[seq - self._entries[0][0]][1]

    def pop_newest(self) -> None:
        """Take back the newest message (its commit to a store failed)."""
        self._forget(*self._entries.pop())

    def _forget(self, seq: int, data: bytes, key: str | None) -> None:
        self.bytes -= len(data)
        self._ledger.total -= len(data)
        if key is not None and self._keys.get(key) == seq:
            del self._keys[key]

    def trim(self) -> None:
        """Drop the oldest until this room is within its limits and, while the
        total is over, down to its newest entry."""
        entries, ledger = self._entries, self._ledger
        while entries and (
            len(entries) > ledger.entries
            or self.bytes > ledger.room_bytes
            or (ledger.over and len(entries) > 1)
        ):
            self._forget(*entries.popleft())

    def clear(self) -> None:
        """Forget everything (the numbering jumped, or the room is forgotten)."""
        self._ledger.total -= self.bytes
        self._entries.clear()
        self._keys.clear()
        self.bytes = 0

    def after(self, seq: int) -> Iterator[bytes]:
        """The events after ``seq`` that are kept, oldest first. The seqs are
        consecutive, so where ``seq + 1`` sits is arithmetic."""
        if not self._entries:
            return iter(())
        start = max(0, seq + 1 - self._entries[0][0])
        return (data for _, data, _ in islice(self._entries, start, None))
