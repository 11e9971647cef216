"""Between the rooms and the outside world: who numbers messages, where history
lives, and how rooms span processes.

``Backplane`` is what ``Chat`` asks of one; ``LocalBackplane`` (the default)
keeps everything in this process: ``Chat`` numbers messages and holds history
itself. The Redis backplane, which makes rooms span every node and worker on
one Redis, is ``wsnet.chat.redis``. Pure: nothing here does I/O.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from wsnet.chat.loop import Loop
from wsnet.metrics import Metric

__all__ = ["Accepted", "Backplane", "Directory", "Duplicate", "Failed", "LocalBackplane",
           "RoomPeek", "RoomSink", "new_epoch"]

log = logging.getLogger("wsnet")

Failed = Callable[[], None]
#: Called with ``(seq, epoch)`` once the backplane holds a message (or held it
#: already, under the same dedup key): the backend's publish is answered so.
Accepted = Callable[[int, str], None]
#: Called with the first event of a message published again under the same
#: dedup key (``history.dedup_key``): the answer for its sender alone.
Duplicate = Callable[[str], None]


class RoomSink(Protocol):
    """What a backplane may tell the rooms (``Chat`` is one): all it knows of them."""

    @property
    def history_limit(self) -> int:
        """Messages a room keeps for replay (a remote store keeps as many)."""
        ...

    def last_seq(self, room: str) -> int:
        """The newest ``seq`` the room holds here (0 if none)."""
        ...

    def deliver(self, room: str, seq: int, encoded: str) -> None: ...

    def room_loaded(
        self, room: str, epoch: str, seq: int, history: list[tuple[int, str]],
        remote: dict[str, str],
    ) -> None: ...

    def room_failed(self, room: str) -> None: ...
    def remote_presence(self, room: str, event: dict[str, Any]) -> None: ...
    def remote_signal(self, room: str, encoded: str) -> None: ...
    def local_members(self, room: str) -> list[tuple[str, str]]: ...


class Backplane(Protocol):
    """What ``Chat`` asks of a backplane. ``remote`` is False when ``Chat``
    itself numbers messages and keeps history; then ``publish`` delivers at
    once and ``open_room``/``close_room``/``presence`` are never needed."""

    remote: bool

    def attach(self, sink: RoomSink) -> None: ...
    def start(self, loop: Loop) -> None: ...
    def stop(self) -> None: ...
    def publish(
        self, room: str, prefix: str, suffix: str, failed: Failed,
        *, key: str | None = None, duplicate: Duplicate | None = None,
        accepted: Accepted | None = None,
    ) -> None:
        """Number and deliver a message; a remote backplane also drops one whose
        ``key`` it has seen (``Chat`` does that itself for a local one), and
        tells ``accepted`` (a local one never needs to)."""
        ...
    def open_room(self, room: str) -> None: ...
    def close_room(self, room: str) -> None: ...
    def presence(self, room: str, member_id: str, name: str | None, event: str) -> None: ...
    def signal(self, room: str, encoded: str) -> None:
        """Pass an ephemeral event (``typing``) to the room's members on other
        nodes: not numbered, not kept."""
        ...
    def status(self) -> dict[str, object]: ...
    def metrics(self) -> list[Metric]: ...


@dataclass(frozen=True, slots=True)
class RoomPeek:
    """A room as every node sees it, read without joining it."""

    epoch: str
    seq: int
    first: int  # the oldest seq history holds (seq + 1 if none)
    events: list[str]  # encoded messages after the asked ``since``, oldest first
    members: list[tuple[str, str]]  # (id, name) on every node


@runtime_checkable
class Directory(Protocol):
    """What a remote backplane can say about rooms this node holds no part of
    (the HTTP API's reads), and how a disconnect reaches every node. Answers
    come later, by callback: None for no such room, an exception if the
    backplane could not answer."""

    #: Called with a name whose connections a disconnect (from any node) closes.
    kicked: Callable[[str], object] | None

    def peek(self, room: str, since: int, limit: int,
             answer: Callable[[RoomPeek | Exception | None], None]) -> None: ...
    def room_sizes(self, answer: Callable[[list[tuple[str, int]] | Exception], None]) -> None: ...
    def kick(self, name: str) -> None: ...


class LocalBackplane:
    """One process: the next ``seq`` is the room's own, delivered at once."""

    remote = False

    def attach(self, sink: RoomSink) -> None:
        self.sink = sink

    def start(self, loop: Loop) -> None:
        pass

    def stop(self) -> None:
        pass

    def publish(
        self, room: str, prefix: str, suffix: str, failed: Failed,
        *, key: str | None = None, duplicate: Duplicate | None = None,
        accepted: Accepted | None = None,
    ) -> None:
        seq = self.sink.last_seq(room) + 1
        self.sink.deliver(room, seq, f"{prefix}{seq}{suffix}")

    def open_room(self, room: str) -> None:
        pass

    def close_room(self, room: str) -> None:
        pass

    def presence(self, room: str, member_id: str, name: str | None, event: str) -> None:
        pass

    def signal(self, room: str, encoded: str) -> None:
        pass

    def status(self) -> dict[str, object]:
        return {"backplane": "local"}

    def metrics(self) -> list[Metric]:
        return []


def new_epoch() -> str:
    """A fresh epoch: a room's history started again (restart, or data lost)."""
    return secrets.token_hex(4)
