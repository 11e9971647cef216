"""The chat application: wire protocol v1 (DESIGN §2), lobby edition.

Every client is in the room ``lobby``. Client frames are commands (a JSON object
with a ``type``) or plain chat text; server frames are JSON arrays of events,
one frame per tick per room, encoded once for all members.

The protocol half (``parse_command``, the event builders) is pure and tested
without sockets; ``ChatApp`` binds it to the server's callbacks.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from wsnet._http import Request, Response, text_response
from wsnet.server import Connection, Handler
from wsnet.tokens import TokenError, verify_token

__all__ = ["ChatApp", "ChatError", "SendMessage", "parse_command", "encode_event"]

LOBBY = "lobby"
#: Longest chat text, in characters: a long paragraph, not a file.
MAX_TEXT_CHARS = 4096
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
#: Commands of protocol v1 that belong to the rooms feature, not yet served.
_LATER = frozenset({"join", "leave", "nick"})


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Chat text for a room."""

    room: str
    text: str


@dataclass(frozen=True, slots=True)
class ChatError:
    """A command we cannot carry out; sent back as an ``error`` event."""

    error: str  # machine-readable code
    detail: str  # for humans

    def event(self) -> dict[str, Any]:
        return {"type": "error", "error": self.error, "detail": self.detail}


def parse_command(text: str, default_room: str = LOBBY) -> SendMessage | ChatError:
    """One client text frame -> a command or the reason it is refused.

    A JSON object is a command and must carry a string ``type``; any other text
    (plain words, a JSON string or number, broken JSON) is chat text for the
    default room, so ``socket.send("hello")`` just works.
    """
    command: object = None
    if text.lstrip()[:1] == "{":
        try:
            command = json.loads(text)
        except (ValueError, RecursionError):  # deep nesting is not a command either
            command = None
    if not isinstance(command, dict):
        return _checked_text(default_room, text)
    kind = command.get("type")
    if not isinstance(kind, str):
        return ChatError("bad_command", "a command needs a string 'type'")
    if kind == "message":
        room = command.get("room", default_room)
        body = command.get("text")
        if not isinstance(room, str):
            return ChatError("bad_command", "'room' must be a string")
        if not isinstance(body, str):
            return ChatError("bad_command", "'message' needs a string 'text'")
        return _checked_text(room, body)
    if kind in _LATER:
        return ChatError("unsupported", f"'{kind}' is not served by this lobby-only server")
    return ChatError("unknown_type", "unknown command type")


def _checked_text(room: str, text: str) -> SendMessage | ChatError:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape
        return ChatError("bad_text", "text is not valid Unicode")
    if not text.strip():
        return ChatError("empty_text", "message text is empty")
    if len(text) > MAX_TEXT_CHARS:
        return ChatError("text_too_long", f"message text is over {MAX_TEXT_CHARS} characters")
    return SendMessage(room, text)


def encode_event(event: dict[str, Any]) -> str:
    """Compact JSON for one event; batches are joined from these strings."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def valid_name(name: str | None) -> bool:
    return name is not None and _NAME.fullmatch(name) is not None


class Room:
    """Members, the next ``seq``, and the events waiting for this tick."""

    __slots__ = ("name", "members", "seq", "pending")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: set[Connection] = set()
        self.seq = 0
        self.pending: list[str] = []


class ChatApp(Handler):
    """Everyone in one lobby; each tick's messages go out as one frame.

    With ``secret``, every upgrade must carry ``?token=`` (see ``wsnet.tokens``),
    and the name it pins is the only name that connection can use.
    """

    def __init__(self, clock: Any = time.time, secret: bytes | None = None) -> None:
        self.lobby = Room(LOBBY)
        self._clock = clock
        self._secret = secret

    def on_upgrade(self, request: Request) -> Response | str | None:
        if self._secret is None:
            return None
        token = request.query.get("token")
        if token is None:
            return text_response(403, "a token is required")
        try:
            name = verify_token(self._secret, token, self._clock())
        except TokenError as exc:
            return text_response(403, f"token refused: {exc}")
        if not valid_name(name):
            return text_response(403, "token refused: malformed")
        return name

    def on_open(self, conn: Connection) -> None:
        request = conn.request
        if isinstance(conn.identity, str):
            name = conn.identity
        else:
            asked = request.query.get("name") if request is not None else None
            name = asked if asked is not None and valid_name(asked) else f"guest-{conn.id}"
        conn.context = name
        self.lobby.members.add(conn)
        welcome = {
            "type": "welcome",
            "id": str(conn.id),
            "name": name,
            "room": LOBBY,
            "seq": self.lobby.seq,
        }
        conn.send("[" + encode_event(welcome) + "]")

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        if isinstance(data, bytes):
            conn.close(1003, "binary frames are not part of chat protocol v1")
            return
        command = parse_command(data)
        if isinstance(command, ChatError):
            conn.send("[" + encode_event(command.event()) + "]")
            return
        if command.room != LOBBY:
            error = ChatError("unknown_room", "this server has only the room 'lobby'")
            conn.send("[" + encode_event(error.event()) + "]")
            return
        room = self.lobby
        room.seq += 1
        room.pending.append(
            encode_event(
                {
                    "type": "message",
                    "room": room.name,
                    "seq": room.seq,
                    "from": conn.context,
                    "text": command.text,
                    "ts": int(self._clock() * 1000),
                },
            ),
        )

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        self.lobby.members.discard(conn)

    def on_rate_limited(self, conn: Connection) -> None:
        error = ChatError("rate_limited", "too many messages: slow down or be disconnected")
        conn.send("[" + encode_event(error.event()) + "]")

    def on_tick(self) -> None:
        room = self.lobby
        if room.pending:
            frame = "[" + ",".join(room.pending) + "]"
            room.pending.clear()
            self.server.broadcast(room.members, frame)

    def status(self) -> dict[str, object]:
        return {"app": "chat", "rooms": 1, "seq": {LOBBY: self.lobby.seq}}
