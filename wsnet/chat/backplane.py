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
from typing import TYPE_CHECKING, Any, Protocol

from wsnet.chat.loop import Loop
from wsnet.metrics import Metric

if TYPE_CHECKING:
    from wsnet.chat.rooms import Chat

__all__ = ["Backplane", "LocalBackplane", "new_epoch"]

log = logging.getLogger("wsnet")

Failed = Callable[[], None]


class Backplane(Protocol):
    """What ``Chat`` asks of a backplane. ``remote`` is False when ``Chat``
    itself numbers messages and keeps history."""

    remote: bool

    def attach(self, chat: Chat[Any]) -> None: ...
    def start(self, loop: Loop) -> None: ...
    def stop(self) -> None: ...
    def publish(self, room: str, prefix: str, suffix: str, failed: Failed) -> None: ...
    def open_room(self, room: str) -> None: ...
    def close_room(self, room: str) -> None: ...
    def presence(self, room: str, member_id: str, name: str | None, event: str) -> None: ...
    def status(self) -> dict[str, object]: ...
    def metrics(self) -> list[Metric]: ...


class LocalBackplane:
    """One process: the next ``seq`` is the room's own, delivered at once."""

    remote = False

    def attach(self, chat: Chat[Any]) -> None:
        self.chat = chat

    def start(self, loop: Loop) -> None:
        pass

    def stop(self) -> None:
        pass

    def publish(self, room: str, prefix: str, suffix: str, failed: Failed) -> None:
        seq = self.chat.rooms[room].seq + 1
        self.chat.deliver(room, seq, f"{prefix}{seq}{suffix}")

    def open_room(self, room: str) -> None:
        pass

    def close_room(self, room: str) -> None:
        pass

    def presence(self, room: str, member_id: str, name: str | None, event: str) -> None:
        pass

    def status(self) -> dict[str, object]:
        return {"backplane": "local"}

    def metrics(self) -> list[Metric]:
        return []


def new_epoch() -> str:
    """A fresh epoch: a room's history started again (restart, or data lost)."""
    return secrets.token_hex(4)
