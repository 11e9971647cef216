"""A Python client for the chat, for bots, scripts and tests: blocking calls on
one socket (standard library plus wsproto), no asyncio and no threads.

    client = ChatClient("ws://127.0.0.1:8080/", name="ann", room="dev")
    client.send("hello")
    for event in client.events(timeout=5):
        print(event)

It reconnects by itself (exponential backoff with full jitter), resumes every
joined room with ``since``/``epoch`` and resends what was not acknowledged, so
the caller sees every message of its rooms exactly once and in ``seq`` order
across drops and server restarts (``session.ClientSession`` has the rules).
``python -m wsnet.client URL --name ann --room dev`` is a terminal chat.
"""

from __future__ import annotations

import random
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from wsnet.client.session import ClientSession, Event

__all__ = ["ChatClient", "ClientError", "Event"]

#: Seconds before messages refused as ``unavailable`` are sent again.
RESEND_INTERVAL = 3.0
#: Largest frame we accept from the server (its own frames are far smaller).
MAX_FRAME = 16 << 20
#: Upgrade answers worth retrying (the server is full or busy); any other
#: refusal (a bad token: 403) is final and raised.
RETRIABLE = frozenset({429, 500, 502, 503, 504})


#: Close codes after which the client does not come back: 4001, the API's
#: disconnect (``kicked``). The caller gets a ``{"type": "closed", ...}`` event.
FINAL_CLOSES = frozenset({4001})


class ClientError(Exception):
    """The server refused the connection for good (e.g. 403: the token)."""


class ChatClient:
    """One user's connection to a chat server (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        room: str | None = "lobby",
        token: str | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 15.0,
        stable_after: float = 5.0,
        timeout: float = 10.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "wss" else 80)
        self._tls = parts.scheme == "wss"
        self._path = parts.path or "/"
        self.session = ClientSession(name=name, token=token)
        if room is not None:
            self.session.join(room)
        self._backoff = (backoff_base, backoff_cap, stable_after)
        self._timeout = timeout
        self._rng = rng
        self._sock: socket.socket | None = None
        self._ws: WSConnection | None = None
        self._parts: list[str] = []  # a fragmented text message so far
        self._ready: deque[Event] = deque()
        self._attempt = 0
        self._retry_at = 0.0
        self._up_since = 0.0
        self._resend_at = 0.0
        self._closed = False
        #: Connections made so far (1 after the first; more after drops).
        self.connections = 0

    # -- the caller's side -------------------------------------------------------

    def send(self, text: str, room: str | None = None) -> str:
        """Send chat text (to ``room``, or the first joined room); returns its
        cid. It is kept and resent until the server has it."""
        room = room if room is not None else self.session.default_room
        if room is None:
            raise ValueError("join a room first")
        cid, frames = self.session.send(room, text)
        self._write(frames)
        return cid

    def join(self, room: str) -> None:
        self._write(self.session.join(room))

    def leave(self, room: str) -> None:
        self._write(self.session.leave(room))

    def typing(self, room: str | None = None) -> None:
        room = room if room is not None else self.session.default_room
        if room is not None:
            self._write(self.session.typing(room))

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def unacknowledged(self) -> int:
        """Messages sent and not yet confirmed by the server."""
        return len(self.session.outbox)

    def fileno(self) -> int:
        """The socket's descriptor, for ``select`` (-1 while disconnected)."""
        return self._sock.fileno() if self._sock is not None else -1

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting up to ``timeout`` seconds (None: forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready:
            if self._closed:
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._step(remaining)
        return self._ready.popleft()

    def events(self, timeout: float) -> Iterator[Event]:
        """Events until ``timeout`` seconds pass without one."""
        while (event := self.next_event(timeout)) is not None:
            yield event

    def __iter__(self) -> Iterator[Event]:
        while (event := self.next_event()) is not None:
            yield event

    def close(self) -> None:
        """Close for good (a normal 1000 close; no reconnection)."""
        self._closed = True
        if self._ws is not None and self._sock is not None:
            try:
                self._sock.sendall(self._ws.send(CloseConnection(code=1000)))
            except OSError:
                pass
        self._lost(reconnect=False)

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the connection's side -----------------------------------------------------

    def _step(self, timeout: float | None) -> None:
        """Do one piece of I/O for at most ``timeout`` seconds."""
        now = time.monotonic()
        if self._sock is None:
            if now < self._retry_at:
                pause = self._retry_at - now
                time.sleep(pause if timeout is None else min(pause, timeout))
                return
            self._connect()
            return
        if self._resend_at and now >= self._resend_at:
            self._resend_at = 0.0
            self._write(self.session.resend_unavailable())
        wait: float | None = timeout
        if self._resend_at:
            until_resend = max(0.0, self._resend_at - now)
            wait = until_resend if wait is None else min(wait, until_resend)
        sock = self._sock
        buffered = isinstance(sock, ssl.SSLSocket) and sock.pending()  # select cannot see it
        if buffered or select.select([sock], [], [], wait)[0]:
            self._read()

    def _connect(self) -> None:
        self.connections += 1
        try:
            sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
            if self._tls:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._host)
        except OSError:
            self._lost()
            return
        ws = WSConnection(ConnectionType.CLIENT)
        self._sock, self._ws = sock, ws
        host = self._host if self._port in (80, 443) else f"{self._host}:{self._port}"
        target = f"{self._path}?{self.session.query()}"
        try:
            sock.sendall(ws.send(Request(host=host, target=target,
                                         extensions=[PerMessageDeflate()])))
        except OSError:
            self._lost()
            return
        deadline = time.monotonic() + self._timeout
        while self._sock is not None and not self.session.connected:
            if time.monotonic() >= deadline:
                self._lost()
                return
            self._read(deadline - time.monotonic())

    def _read(self, timeout: float | None = None) -> None:
        sock, ws = self._sock, self._ws
        assert sock is not None and ws is not None
        try:
            sock.settimeout(timeout if timeout is not None else self._timeout)
            data = sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            return
        except OSError:
            self._lost()
            return
        if not data:
            self._lost()
            return
        ws.receive_data(data)
        out: list[str] = []
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                self._up_since = time.monotonic()
                out.extend(self.session.connection_made())
            elif isinstance(event, RejectConnection | RejectData):
                status = getattr(event, "status_code", 0)
                self._lost()
                if status and status not in RETRIABLE:
                    self._closed = True
                    raise ClientError(f"the server refused the connection: HTTP {status}")
                return
            elif isinstance(event, TextMessage):
                self._text(event, out)
            elif isinstance(event, Ping):
                self._send_raw(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._send_raw(ws.send(event.response()))
                if event.code == 1012:  # "service restart": come back now, not later
                    self._attempt = 0
                    self._up_since = 0.0
                if event.code in FINAL_CLOSES:  # kicked: coming back would defeat it
                    self._closed = True
                    self._ready.append({"type": "closed", "code": event.code,
                                        "reason": event.reason})
                self._lost(reconnect=not self._closed)
                return
        self._write(out)

    def _text(self, event: TextMessage, out: list[str]) -> None:
        self._parts.append(event.data)
        if sum(len(p) for p in self._parts) > MAX_FRAME:
            self._lost()
            return
        if not event.message_finished:
            return
        frame, self._parts = "".join(self._parts), []
        deliver, reply = self.session.receive(frame)
        self._ready.extend(deliver)
        out.extend(reply)
        if any(not item.sent for item in self.session.pending()) and not self._resend_at:
            self._resend_at = time.monotonic() + RESEND_INTERVAL

    def _write(self, frames: list[str]) -> None:
        if not frames or self._ws is None or self._sock is None:
            return
        self._send_raw(b"".join(self._ws.send(Message(data=f)) for f in frames))

    def _send_raw(self, data: bytes) -> None:
        if self._sock is None:
            return
        try:
            self._sock.settimeout(self._timeout)
            self._sock.sendall(data)
        except OSError:
            self._lost()

    def _lost(self, reconnect: bool = True) -> None:
        """The connection is gone: close the socket, and plan the next try."""
        if self._sock is not None:
            self._sock.close()
        self._sock = self._ws = None
        self._parts = []
        self._resend_at = 0.0
        self.session.connection_lost()
        if not reconnect:
            return
        base, cap, stable = self._backoff
        if self._up_since and time.monotonic() - self._up_since >= stable:
            self._attempt = 0
        self._up_since = 0.0
        self._retry_at = time.monotonic() + self._rng() * min(cap, base * 2 ** self._attempt)
        self._attempt = min(self._attempt + 1, 30)
