"""The chat application (protocol v1, ARCHITECTURE.md "The chat"): rooms,
presence, history with resume, and a web client at ``GET /``.

``protocol`` parses commands and encodes events, ``rooms`` holds the state and
the per-tick batching without sockets, ``backplane`` is the pure seam to other
processes (``redis`` is the Redis one), ``app`` binds them to the server. Names
load on first use, so importing the sans-I/O modules loads no server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsnet.chat.app import ChatApp
    from wsnet.chat.protocol import MAX_TEXT_CHARS, ChatError, parse_command, valid_name, valid_room
    from wsnet.chat.rooms import Chat
    from wsnet.chat.settings import ChatSettings

_HOMES = {
    "MAX_TEXT_CHARS": "wsnet.chat.protocol",
    "Chat": "wsnet.chat.rooms",
    "ChatApp": "wsnet.chat.app",
    "ChatError": "wsnet.chat.protocol",
    "ChatSettings": "wsnet.chat.settings",
    "parse_command": "wsnet.chat.protocol",
    "valid_name": "wsnet.chat.protocol",
    "valid_room": "wsnet.chat.protocol",
}

__all__ = [
    "MAX_TEXT_CHARS",
    "Chat",
    "ChatApp",
    "ChatError",
    "ChatSettings",
    "parse_command",
    "valid_name",
    "valid_room",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'wsnet.chat' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
