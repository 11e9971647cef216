"""Chat clients for the live tests: the ``websockets`` package as the independent
peer, ``recv_json``/``welcome``/``next_messages`` on a bare connection, and
``ChatClient``, which keeps every event it received so that a test can wait for
the one it means (``until``) without losing the others.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Protocol, Self
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect

Event = dict[str, Any]

#: Events about who is in a room: other clients arriving, leaving or renamed.
PRESENCE_EVENTS = {"join", "leave", "presence", "nick"}
#: What may share the welcome's frame: URL errors, the default room's presence
#: and replay.
WELCOME_FRAME_EVENTS = {"presence", "gap", "message", "error"}


def ws_connect(url: str, **options: object) -> connect:
    """``websockets`` asyncio client with bounded timeouts, no proxy and no
    client-side keepalive (tests that need pings say so)."""
    settings: dict[str, object] = {
        "proxy": None,
        "open_timeout": 5,
        "close_timeout": 2,
        "ping_interval": None,
    }
    settings.update(options)
    return connect(url, **settings)  # type: ignore[arg-type]


def run(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    """Run one async scenario on a fresh loop, bounded as a whole."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> list[Event]:
    """The next frame from the chat server, which must be a JSON array of events."""
    raw = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(raw, str), f"chat frames are text, got {raw!r:.80}"
    events = json.loads(raw)
    assert isinstance(events, list), f"a chat frame is a JSON array, got {raw:.80}"
    assert all(isinstance(e, dict) and "type" in e for e in events), raw[:200]
    return events


async def welcome(ws: ClientConnection) -> Event:
    """The first frame of a chat connection: the welcome event, then only what
    belongs to it (URL errors, the default room's presence and replay)."""
    events = await recv_json(ws)
    assert events[0]["type"] == "welcome", events
    assert {e["type"] for e in events[1:]} <= WELCOME_FRAME_EVENTS, events
    return events[0]


async def next_messages(ws: ClientConnection, count: int, timeout: float = 5.0) -> list[Event]:
    """Exactly the next ``count`` message events (across frames). Presence events
    (other clients joining or leaving) may come along; anything else (an error
    event, say) fails."""
    deadline = time.monotonic() + timeout
    got: list[Event] = []
    while len(got) < count:
        events = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        assert all(e["type"] in {"message", *PRESENCE_EVENTS} for e in events), events
        got.extend(e for e in events if e["type"] == "message")
    assert len(got) == count, f"expected {count} message events, got {len(got)}"
    return got


def kind(type_: str, **fields: object) -> Callable[[Event], bool]:
    """Matches events of ``type_`` whose ``fields`` have the given values."""
    return lambda e: e["type"] == type_ and all(e.get(k) == v for k, v in fields.items())


class HasUrl(Protocol):
    @property
    def url(self) -> str: ...


class ChatClient:
    """A websockets connection that keeps every event it received, in order.

    ``until`` consumes: it returns the next not yet consumed match and passes over
    the others (they stay in ``events``); ``seen`` looks at consumed ones too.
    """

    #: The default wait of ``until``, ``seen`` and ``wait_view`` (seconds).
    timeout: ClassVar[float] = 5.0

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[Event] = []
        #: Frames received (each a JSON array of events).
        self.frames = 0
        self._seen = 0
        self.id = ""
        self.name = ""

    @classmethod
    async def open(cls, server: HasUrl, **query: object) -> Self:
        """Connect to ``server.url`` with ``query`` and wait for the welcome."""
        url = server.url + ("?" + urlencode(query) if query else "")
        client = cls(await ws_connect(url))
        client.opened()
        event = await client.until(kind("welcome"))
        client.id, client.name = event["id"], event["name"]
        return client

    def opened(self) -> None:
        """Called once connected, before the welcome: a subclass's hook."""

    async def send(self, command: Event | str) -> None:
        await self.ws.send(command if isinstance(command, str) else json.dumps(command))

    async def _receive(self, deadline: float) -> None:
        """One more frame into ``events``; TimeoutError at ``deadline``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        raw = await asyncio.wait_for(self.ws.recv(), remaining)
        assert isinstance(raw, str), raw
        batch = json.loads(raw)
        assert isinstance(batch, list) and batch, raw
        self.frames += 1
        self.events.extend(batch)

    async def until(self, match: Callable[[Event], bool], timeout: float | None = None) -> Event:
        """The next not yet consumed event that matches (the ones passed over
        stay in ``events``)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            while self._seen < len(self.events):
                event = self.events[self._seen]
                self._seen += 1
                if match(event):
                    return event
            try:
                await self._receive(deadline)
            except TimeoutError:
                raise AssertionError(
                    f"{self.id}: no matching event within {timeout} s; last events: "
                    f"{self.events[-12:]}",
                ) from None

    async def seen(self, match: Callable[[Event], bool], timeout: float | None = None) -> Event:
        """The first event ever received that matches, waiting for it if need be
        (unlike ``until``, it looks at consumed events too)."""
        for event in self.events:
            if match(event):
                return event
        return await self.until(match, timeout)

    async def error(self, timeout: float | None = None) -> Event:
        return await self.until(kind("error"), timeout)

    async def message(self, text: str, timeout: float | None = None) -> Event:
        return await self.until(kind("message", text=text), timeout)

    def messages(self, room: str) -> list[Event]:
        return [e for e in self.events if e["type"] == "message" and e["room"] == room]

    async def messages_until(self, seq: int, room: str, timeout: float | None = None,
                             ) -> list[Event]:
        """Every message of ``room`` so far, once the one numbered ``seq`` came."""
        await self.until(kind("message", room=room, seq=seq), timeout)
        return self.messages(room)

    def view(self, room: str) -> dict[str, str]:
        """Who is in ``room`` as this client's events tell it: id -> name."""
        members: dict[str, str] = {}
        for event in self.events:
            if event.get("room") != room:
                continue
            if event["type"] == "presence" and "members" in event:
                members = {m["id"]: m["name"] for m in event["members"]}
            elif event["type"] in ("join", "nick"):
                members[event["id"]] = event["name"]
            elif event["type"] == "leave":
                members.pop(event["id"], None)
                if event["id"] == self.id:
                    members = {}
        return members

    async def wait_view(self, expected: dict[str, str], room: str,
                        timeout: float | None = None) -> None:
        """Receive until ``view(room)`` is ``expected``."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while self.view(room) != expected:
            try:
                await self._receive(deadline)
            except TimeoutError:
                raise AssertionError(
                    f"{self.id} sees {self.view(room)}, not {expected}, after {timeout} s; "
                    f"events: {[e for e in self.events if e.get('room') == room][-12:]}",
                ) from None

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake."""
        self.ws.transport.abort()

    async def close(self) -> None:
        await self.ws.close()
