"""A connection's pending output: a list of ``bytes`` chunks, never joined.

A broadcast appends the same frame object to thousands of outboxes, so chunks
are shared and must not be modified. After a partial write the first chunk is
replaced by a ``memoryview`` of its unsent tail (slicing ``bytes`` would copy).
"""

from __future__ import annotations

__all__ = ["Outbox"]


class Outbox:
    __slots__ = ("chunks", "frames", "nbytes", "partial", "queued")

    def __init__(self) -> None:
        self.chunks: list[bytes | memoryview] = []
        self.nbytes = 0
        #: Bytes and chunks (frames, responses) ever queued: the access line's "out".
        self.queued = 0
        self.frames = 0
        #: The first chunk has been written in part; it must go out whole before
        #: anything may replace what follows it.
        self.partial = False

    def __bool__(self) -> bool:
        return self.nbytes > 0

    @property
    def written(self) -> int:
        """Bytes ever handed to the kernel (or dropped by ``discard``)."""
        return self.queued - self.nbytes

    def append(self, data: bytes) -> None:
        if data:
            self.chunks.append(data)
            size = len(data)
            self.nbytes += size
            self.queued += size
            self.frames += 1

    def consume(self, sent: int) -> None:
        """Forget the first ``sent`` bytes, which the kernel has taken."""
        if sent <= 0:
            return
        self.nbytes -= sent
        chunks = self.chunks
        i = 0
        while i < len(chunks) and sent >= len(chunks[i]):
            sent -= len(chunks[i])
            i += 1
        del chunks[:i]
        if sent:
            chunks[0] = memoryview(chunks[0])[sent:]
            self.partial = True
        else:
            self.partial = False

    def discard(self) -> None:
        """Drop what is queued, keeping a partly written frame so the stream
        stays well formed for what is appended next (a close frame)."""
        if self.partial and self.chunks:
            del self.chunks[1:]
            self.nbytes = len(self.chunks[0])
        else:
            self.chunks.clear()
            self.nbytes = 0
            self.partial = False
