"""Fan-out: queueing frames into outboxes, one admission rule for one or many.

``send`` and ``broadcast`` differ only in how a frame is made (once per
message, shared by every recipient of the same compression setting); whether a
connection may take one more frame is decided in one place, ``admits``
(ARCHITECTURE.md, "Fan-out").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from wsnet._frames import Outgoing
from wsnet._server_metrics import ServerMetrics

if TYPE_CHECKING:
    from wsnet._channel import Channel
    from wsnet._lifecycle import Link
    from wsnet.connection import Connection

__all__ = ["Fanout"]


class Fanout:
    """Queues messages for open connections and flags the slow ones."""

    __slots__ = ("_limit", "_mark_dirty", "_metrics", "slow")

    def __init__(
        self, outbox_limit: int, mark_dirty: Callable[[Channel], None], metrics: ServerMetrics,
    ) -> None:
        self._limit = outbox_limit
        self._mark_dirty = mark_dirty
        self._metrics = metrics
        #: Connections past the outbox limit, closed 1008 at the next tick.
        self.slow: list[Link] = []

    def admits(self, link: Link) -> bool:
        """May ``link`` take one more frame now?

        The limit applies to what was already waiting, not to the frame being
        added: one large batch must not condemn a client that reads at once, and
        memory per client stays under the limit plus one frame. A connection
        that finds its backlog over the limit is flagged and closed at the next
        tick, never from inside an application's own ``send``/``broadcast`` loop
        over a set it is iterating.
        """
        if not link.is_open or link.over_limit:
            return False
        if link.ch.outbox.nbytes > self._limit:
            link.over_limit = True
            self.slow.append(link)
            return False
        return True

    def send(self, link: Link, message: Outgoing) -> bool:
        session = link.session
        if session is None or not self.admits(link) or not session.send(message):
            return False
        self._metrics.deliveries.value += 1
        self._mark_dirty(link.ch)
        return True

    def broadcast(self, conns: Iterable[Connection], data: str | bytes) -> int:
        """Send one message to many connections, encoded once.

        The same frame object (plain, or compressed once per window size) goes
        into every outbox. Returns how many connections it was queued for.
        """
        message = Outgoing(data)
        admits = self.admits
        mark_dirty = self._mark_dirty
        plain: bytes | None = None
        queued = 0
        for conn in conns:
            link = conn._link
            session = link.session
            if session is None or not admits(link):
                continue
            if session.deflate is None:
                if plain is None:
                    plain = message.plain()
                frame = plain
            else:
                frame = session.frame_for(message)
            link.ch.outbox.append(frame)
            queued += 1
            mark_dirty(link.ch)
        metrics = self._metrics
        metrics.deliveries.value += queued
        metrics.broadcasts.value += 1
        metrics.broadcast_recipients.observe(queued)
        return queued

    def take_slow(self) -> list[Link]:
        slow, self.slow = self.slow, []
        return slow
