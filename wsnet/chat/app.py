"""The chat application: binds the sans-I/O ``Chat`` to the server's callbacks
and serves the web client at ``GET /``."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable
from functools import cache
from importlib import resources

from wsnet import Connection, Handler, Pending, Request, Response, Server
from wsnet.chat.api import ChatApi
from wsnet.chat.backplane import Backplane, Directory
from wsnet.chat.protocol import ChatError, encode_event, frame, parse_hello, valid_name
from wsnet.chat.rooms import Chat, ChatSettings, Member
from wsnet.chat.store import Store
from wsnet.metrics import Gauge, Metric
from wsnet.tokens import Token, TokenError, read_token

__all__ = ["ChatApp"]

log = logging.getLogger("wsnet")

PAGE_PATHS = ("/", "/index.html")


class ChatApp(Handler):
    """Rooms, presence, history and the web page, on one server.

    With ``secret``, every upgrade must carry ``?token=`` (see ``wsnet.tokens``),
    and the name it pins is the only name that connection can use. With a
    ``store`` (``wsnet.chat.sqlite.SqliteStore``), rooms outlive the process;
    without one they live in memory.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        secret: bytes | None = None,
        settings: ChatSettings | None = None,
        backplane: Backplane | None = None,
        store: Store | None = None,
        *,
        api_key: bytes | None = None,
    ) -> None:
        self.chat: Chat[Connection] = Chat(settings, clock, backplane=backplane, store=store)
        self.backplane = self.chat.backplane
        #: Where rooms outlive the process (None: in memory only).
        self.store = store
        self._clock = clock
        self._secret = secret
        #: Open connections (for the API's disconnect).
        self._connections: set[Connection] = set()
        #: The backend's HTTP API under /api/, with a key only.
        self.api = None if api_key is None else ChatApi(self.chat, api_key, self.disconnect)
        if isinstance(self.backplane, Directory):  # a disconnect from any node
            self.backplane.kicked = self.disconnect
        # Ids must be unique across the nodes a room spans.
        node = getattr(self.backplane, "node", None)
        self._node = f"{node}-" if self.backplane.remote and node else ""

    def on_start(self, server: Server) -> None:
        super().on_start(server)
        self.backplane.start(server)

    def on_stop(self) -> None:
        self.backplane.stop()
        self.chat.close()

    def affinity(self, request: Request) -> str | None:
        """The room in the URL: with ``--workers``, a room's members then share
        one worker (as far as its load allows), which alone receives, batches
        and encodes its messages."""
        hello = parse_hello(request.query)
        return hello.room

    def on_upgrade(self, request: Request) -> Response | Token | None:
        if self._secret is None:
            return None
        token = request.query.get("token")
        if token is None:
            return Response.text(403, "a token is required")
        try:
            claims = read_token(self._secret, token, self._clock())
        except TokenError as exc:
            return Response.text(403, f"token refused: {exc}")
        if not valid_name(claims.name):
            return Response.text(403, "token refused: malformed")
        return claims

    def on_open(self, conn: Connection) -> None:
        assert conn.request is not None
        hello = parse_hello(conn.request.query)
        token = conn.identity if isinstance(conn.identity, Token) else None
        errors = hello.errors
        if token is not None and hello.name is not None and hello.name != token.name:
            errors += (ChatError("name_pinned", "your token fixes your name"),)
        name = token.name if token is not None else hello.name or f"guest-{conn.id}"
        member, welcome = self.chat.connect(
            conn,
            f"{self._node}{conn.id}",
            name,
            pinned=token is not None,
            grants=token.grants if token is not None else (),
            room=hello.room,
            since=hello.since,
            epoch=hello.epoch,
            errors=errors,
        )
        conn.context = member
        self._connections.add(conn)
        conn.send(welcome)

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        if isinstance(data, bytes):
            conn.close(1003, "binary frames are not part of chat protocol v1")
            return
        self.chat.receive(conn.context, data)

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        self._connections.discard(conn)
        member: Member[Connection] | None = conn.context
        if member is not None:
            self.chat.disconnect(member)

    def on_rate_limited(self, conn: Connection) -> None:
        # Sent now, not with the tick: if the flood goes on, the 1008 close may
        # come before the tick, and the client should have been told first.
        error = ChatError("rate_limited", "too many messages: slow down or be disconnected")
        conn.send(frame([encode_event(error.event())]))

    def on_tick(self) -> None:
        broadcast = self.server.broadcast
        for peers, text in self.chat.flush():
            try:
                broadcast(peers, text)
            except Exception:  # one bad frame must not cost the rest of the tick
                log.exception("chat frame for %d clients not sent", len(peers))

    def on_http(self, request: Request) -> Response | Pending | None:
        if request.path in PAGE_PATHS and request.method in ("GET", "HEAD"):
            return web_page()
        if self.api is not None:
            return self.api.answer(request)
        return None

    def disconnect(self, name: str) -> int:
        """Close every connection of the user called ``name`` (4001, ``kicked``)."""
        kicked = [c for c in self._connections
                  if c.context is not None and c.context.name == name]
        for conn in kicked:
            conn.close(4001, "kicked")
        return len(kicked)

    def status(self) -> dict[str, object]:
        return {"app": "chat", **self.chat.stats(), **self.backplane.status(),
                **self.chat.store_status()}

    def metrics(self) -> list[Metric]:
        stats = self.chat.stats()
        rooms = Gauge("wsnet_chat_rooms", "Chat rooms with members on this node.")
        rooms.set(stats["rooms"])
        history = Gauge("wsnet_chat_history_messages", "Messages held for replay here.")
        history.set(stats["history_messages"])
        return [rooms, history, *self.backplane.metrics(), *self.chat.store_metrics()]


@cache
def web_page() -> Response:
    """The web client, with a content security policy that allows exactly its
    own inline script and style: injected markup could run nothing."""
    page = resources.files("wsnet.chat").joinpath("static/index.html").read_bytes()
    text = page.decode()
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_hashes(text, 'script')}",
            f"style-src {_hashes(text, 'style')}",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ],
    )
    headers = (
        ("Content-Security-Policy", policy),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("Cache-Control", "no-cache"),
    )
    return Response(200, page, "text/html; charset=utf-8", headers)


def _hashes(page: str, tag: str) -> str:
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
    if not bodies:
        return "'none'"
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in bodies
    )


