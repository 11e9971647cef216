"""Typing signals: ephemeral events a room hears in its tick's batch and that
are never stored, numbered or replayed.

At most one per member and room per ``ChatSettings.typing_interval`` goes out
(the rest drop without an answer: a keystroke each would be a flood with no
news in it), none in rooms whose presence is a count, and only from members
who may write there. A remote backplane carries them to the other nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsnet.chat.backplane import Backplane
from wsnet.chat.batch import Batch
from wsnet.chat.protocol import encode_event
from wsnet.chat.settings import ChatSettings
from wsnet.chat.state import Member, Room

__all__ = ["TypingSignals"]


class TypingSignals:
    """The typing rule for every room of one ``Chat``."""

    def __init__(
        self, settings: ChatSettings, timer: Callable[[], float], batch: Batch[Any],
        backplane: Backplane, may_write: Callable[[Member[Any], str], bool],
    ) -> None:
        self._interval = settings.typing_interval
        self._timer = timer
        self._batch = batch
        self._backplane = backplane
        self._may_write = may_write

    def signal(self, member: Member[Any], room: Room) -> None:
        """``member``, in ``room``, is typing."""
        now = self._timer()
        typed = member.typed if member.typed is not None else {}
        last = typed.get(room.name)
        if room.counting or (last is not None and now - last < self._interval):
            return
        if not self._may_write(member, room.name):
            return
        typed[room.name] = now
        member.typed = typed
        encoded = encode_event({"type": "typing", "room": room.name, "id": member.id,
                                "name": member.name})
        self._batch.emit(room, encoded)
        self._backplane.signal(room.name, encoded)

    def remote(self, room: Room | None, encoded: str) -> None:
        """A typing signal from another node's member."""
        if room is not None and room.members and not room.counting:
            self._batch.emit(room, encoded)

    @staticmethod
    def left(member: Member[Any], room: Room) -> None:
        if member.typed is not None:
            member.typed.pop(room.name, None)
