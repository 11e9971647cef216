"""Chat wire protocol v1 (README, "The chat protocol"), without state or sockets.

Client frames become commands (or the reason they are refused); events are
compact JSON strings so a tick's batch is a join of strings, encoded once.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

__all__ = [
    "MAX_TEXT_CHARS",
    "ChatError",
    "Command",
    "Hello",
    "Join",
    "Leave",
    "Nick",
    "SendMessage",
    "Typing",
    "encode_event",
    "frame",
    "parse_command",
    "parse_hello",
    "checked_text",
    "valid_cid",
    "valid_name",
    "valid_room",
]

#: Longest chat text, in characters: a long paragraph, not a file.
MAX_TEXT_CHARS = 4096
#: Longest client message id: room for a UUID or a random token, no more.
MAX_CID_CHARS = 64
#: Longest epoch a client may quote back (ours are 8 hex digits).
MAX_EPOCH_CHARS = 32
LOBBY = "lobby"
#: Direct-message rooms: ``dm:<name>:<name>`` (``access.dm_room``).
DM_PREFIX = "dm:"

# Letters and digits of any script plus "_ . -"; names may hold single inner
# spaces (people's names do), rooms may not (they travel in URLs).
_CID = re.compile(rf"[!-~]{{1,{MAX_CID_CHARS}}}")
_NAME_MAX = 32
_ROOM_MAX = 64
#: Letters, marks and digits of any script (by Unicode category), "_ . -".
_WORD_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No"})
#: Letters that render as nothing: a name made of them would be invisible.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")


def _word_char(ch: str, extra: str) -> bool:
    if ch in "_.-" or ch in extra:
        return True
    return unicodedata.category(ch) in _WORD_CATEGORIES and ch not in _BLANK_LETTERS


def _words(text: str, limit: int, spaces: bool, extra: str = "") -> bool:
    if not 0 < len(text) <= limit:
        return False
    if text.isascii():  # most names: one regex instead of a lookup per character
        return _ascii_words(spaces, extra).fullmatch(text) is not None
    if unicodedata.category(text[0]).startswith("M"):
        return False  # a mark needs something to sit on
    parts = text.split(" ") if spaces else [text]
    return all(part and all(_word_char(ch, extra) for ch in part) for part in parts)


@functools.cache
def _ascii_words(spaces: bool, extra: str) -> re.Pattern[str]:
    """``_words`` for ASCII text: ASCII has no marks or blank letters, and its
    letters and digits are exactly the ASCII alphanumerics."""
    word = f"[A-Za-z0-9_.{re.escape(extra)}-]+"
    return re.compile(f"{word}(?: {word})*" if spaces else word)


def valid_name(name: object) -> TypeGuard[str]:
    """1-32 letters, marks and digits of any script, ``_ . -``, single inner spaces."""
    return isinstance(name, str) and _words(name, _NAME_MAX, spaces=True)


def valid_room(room: object) -> TypeGuard[str]:
    """Like a name with ``:`` and without spaces (rooms travel in URLs), up to
    64 characters; or a direct-message room, ``dm:<name>:<name>``."""
    if not isinstance(room, str):
        return False
    return _words(room, _ROOM_MAX, spaces=False, extra=":") or split_dm(room) is not None


def split_dm(room: str) -> tuple[str, str] | None:
    """The two names of a ``dm:<name>:<name>`` room, in its order (names hold
    no ``:``, so the split is unambiguous); None for any other room."""
    if not room.startswith(DM_PREFIX):
        return None
    parts = room[len(DM_PREFIX):].split(":")
    if len(parts) != 2 or not all(valid_name(p) for p in parts):
        return None
    return parts[0], parts[1]


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Chat text for a room; ``room=None`` means the connection's default room."""

    room: str | None
    text: str
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    since: int | None = None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class Leave:
    room: str


@dataclass(frozen=True, slots=True)
class Nick:
    name: str


@dataclass(frozen=True, slots=True)
class Typing:
    """An ephemeral signal: never stored, replayed or numbered."""

    room: str


Command = SendMessage | Join | Leave | Nick | Typing


@dataclass(frozen=True, slots=True)
class ChatError:
    """A command we cannot carry out; sent back as an ``error`` event."""

    error: str  # machine-readable code
    detail: str  # for humans
    room: str | None = None
    cid: str | None = None

    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = {"type": "error", "error": self.error, "detail": self.detail}
        if self.room is not None:
            event["room"] = self.room
        if self.cid is not None:
            event["cid"] = self.cid
        return event


def parse_command(text: str) -> Command | ChatError:
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
        return checked_text(None, text, None)
    kind = command.get("type")
    if not isinstance(kind, str):
        return ChatError("bad_command", "a command needs a string 'type'")
    parse = _PARSERS.get(kind)
    if parse is None:
        return ChatError("unknown_type", "unknown command type")
    return parse(command)


def valid_cid(cid: object) -> TypeGuard[str]:
    """1-64 printable ASCII characters: a client's message id, or an API
    idempotency key."""
    return isinstance(cid, str) and _CID.fullmatch(cid) is not None


def _parse_message(command: Mapping[str, Any]) -> Command | ChatError:
    cid = command.get("cid")
    if cid is not None and not valid_cid(cid):
        detail = f"'cid' must be 1-{MAX_CID_CHARS} printable ASCII characters"
        return ChatError("bad_command", detail)
    room = command.get("room")
    if room is not None:
        if not isinstance(room, str):
            return ChatError("bad_command", "'room' must be a string", cid=cid)
        if not valid_room(room):
            return ChatError("bad_room", "no such room name", cid=cid)
    body = command.get("text")
    if not isinstance(body, str):
        return ChatError("bad_command", "'message' needs a string 'text'", room, cid)
    return checked_text(room, body, cid)


def checked_text(room: str | None, text: str, cid: str | None) -> SendMessage | ChatError:
    """Chat text as every path takes it (a frame, or the HTTP API): bounded,
    valid Unicode, not blank."""
    if len(text) > MAX_TEXT_CHARS:
        detail = f"message text is over {MAX_TEXT_CHARS} characters"
        return ChatError("text_too_long", detail, room, cid)
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape
        return ChatError("bad_text", "text is not valid Unicode", room, cid)
    if not text.strip():
        return ChatError("empty_text", "message text is empty", room, cid)
    return SendMessage(room, text, cid)


def _room_of(command: Mapping[str, Any]) -> str | ChatError:
    room = command.get("room")
    if not isinstance(room, str):
        return ChatError("bad_command", f"'{command['type']}' needs a string 'room'")
    if not valid_room(room):
        return ChatError("bad_room", ROOM_RULE)
    return room


def _parse_join(command: Mapping[str, Any]) -> Command | ChatError:
    room = _room_of(command)
    if isinstance(room, ChatError):
        return room
    since = command.get("since")
    if since is not None and not _is_seq(since):
        return ChatError("bad_command", "'since' must be a non-negative integer", room)
    epoch = command.get("epoch")
    if epoch is not None and not (isinstance(epoch, str) and len(epoch) <= MAX_EPOCH_CHARS):
        return ChatError("bad_command", "'epoch' must be a short string", room)
    return Join(room, since, epoch)


def _parse_leave(command: Mapping[str, Any]) -> Command | ChatError:
    room = _room_of(command)
    return room if isinstance(room, ChatError) else Leave(room)


def _parse_typing(command: Mapping[str, Any]) -> Command | ChatError:
    room = _room_of(command)
    return room if isinstance(room, ChatError) else Typing(room)


def _parse_nick(command: Mapping[str, Any]) -> Command | ChatError:
    name = command.get("name")
    if not isinstance(name, str):
        return ChatError("bad_command", "'nick' needs a string 'name'")
    if not valid_name(name):
        return ChatError("bad_name", NAME_RULE)
    return Nick(name)


def _is_seq(value: object) -> bool:
    # JSON true is a Python bool, which is an int: not a position.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_PARSERS = {
    "message": _parse_message,
    "join": _parse_join,
    "leave": _parse_leave,
    "nick": _parse_nick,
    "typing": _parse_typing,
}

NAME_RULE = "names are 1-32 letters, digits, '_', '.', '-' or single inner spaces"
ROOM_RULE = ("room names are 1-64 letters, digits, '_', '.', '-' or ':'"
             " (or dm:<name>:<name>)")


@dataclass(frozen=True, slots=True)
class Hello:
    """What the upgrade URL asked for, already checked.

    Bad values do not refuse the connection (a browser cannot read why an
    upgrade failed): they fall back and travel as errors in the welcome frame.
    """

    name: str | None = None
    room: str | None = LOBBY
    since: int | None = None
    epoch: str | None = None
    errors: tuple[ChatError, ...] = field(default=())


def parse_hello(query: Mapping[str, str]) -> Hello:
    errors: list[ChatError] = []
    name = query.get("name")
    if name is not None and not valid_name(name):
        errors.append(ChatError("bad_name", NAME_RULE))
        name = None
    room: str | None = query.get("room", LOBBY)
    if not valid_room(room):
        errors.append(ChatError("bad_room", "the 'room' in the URL is not a room name"))
        room = None
    since: int | None = None
    raw = query.get("since")
    if raw is not None:
        if raw.isascii() and raw.isdigit() and len(raw) <= 18:
            since = int(raw)
        else:
            errors.append(ChatError("bad_command", "'since' must be a non-negative integer"))
    # Any epoch is kept, even a long one: it can only fail to match, which
    # makes the resume a reset, never a replay from the wrong numbering.
    return Hello(name, room, since, query.get("epoch"), tuple(errors))


#: One encoder for every event: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_event(event: Mapping[str, Any]) -> str:
    """Compact JSON for one event; batches are joined from these strings."""
    return _ENCODER.encode(event)


def member_entry(ident: str, name: str) -> str:
    """One member as presence snapshots list it, encoded: ``{"id":..,"name":..}``."""
    return _ENCODER.encode({"id": ident, "name": name})


def frame(events: list[str]) -> str:
    """A server frame: the JSON array of already encoded events."""
    return "[" + ",".join(events) + "]"


def message_parts(
    room: str, sender: str, sender_id: str, text: str, *, ts_ms: int, cid: str | None,
) -> tuple[str, str]:
    """A ``message`` event as the text before and after its ``seq``: the
    backplane numbers it, and the event is written around the number."""
    head = {"type": "message", "room": room}
    rest: dict[str, Any] = {"from": sender, "from_id": sender_id, "text": text, "ts": ts_ms}
    if cid is not None:
        rest["cid"] = cid
    return encode_event(head)[:-1] + ',"seq":', "," + encode_event(rest)[1:]
