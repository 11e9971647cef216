"""A ``Chat`` driven without sockets: peers are names, frames are parsed back
into events, on a fake clock, with predictable epochs (``e1``, ``e2``, ...)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from support.clock import FakeClock
from wsnet.chat.rooms import Chat, ChatSettings, Member
from wsnet.chat.store import Store

Event = dict[str, Any]


def epochs(prefix: str = "e") -> Iterator[str]:
    return iter(f"{prefix}{i}" for i in range(1, 10**6))


class Harness:
    """A Chat whose peers are names; collects what each peer received."""

    def __init__(
        self, *, store: Store | None = None, clock: FakeClock | None = None,
        new_epochs: Iterator[str] | None = None, **settings: Any,
    ) -> None:
        self.clock = clock or FakeClock(1_000_000.0)
        fresh = new_epochs or epochs()
        self.chat: Chat[str] = Chat(
            ChatSettings(**settings), self.clock, lambda: next(fresh), store=store,
        )
        self.members: dict[str, Member[str]] = {}
        self.last_flush: list[tuple[list[str], str]] = []

    def connect(self, peer: str, room: str | None = "lobby", **kw: Any) -> list[Event]:
        member, welcome = self.chat.connect(peer, peer, peer, room=room, **kw)
        self.members[peer] = member
        events: list[Event] = json.loads(welcome)
        return events

    def send(self, peer: str, command: str | Event) -> None:
        text = command if isinstance(command, str) else json.dumps(command)
        self.chat.receive(self.members[peer], text)

    def drop(self, peer: str) -> None:
        self.chat.disconnect(self.members.pop(peer))

    def tick(self) -> dict[str, list[Event]]:
        """One flush: each peer's events. Fails if a peer got two frames."""
        self.last_flush = self.chat.flush()
        got: dict[str, list[Event]] = {}
        for peers, frame in self.last_flush:
            events = json.loads(frame)
            assert events, "no empty frames"
            for peer in peers:
                assert peer not in got, f"{peer} got two frames in one tick"
                got[peer] = events
        return got
