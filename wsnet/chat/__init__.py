"""The chat application (protocol v1, DESIGN §2): rooms, presence, history with
resume, and a web client at ``GET /``.

``protocol`` parses commands and encodes events, ``rooms`` holds the state and
the per-tick batching without sockets, ``app`` binds them to the server.
"""

from wsnet.chat.app import ChatApp
from wsnet.chat.protocol import MAX_TEXT_CHARS, ChatError, parse_command, valid_name, valid_room
from wsnet.chat.rooms import Chat, ChatSettings

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
