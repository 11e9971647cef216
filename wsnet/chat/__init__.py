"""The chat application (protocol v1): rooms, presence, history and the web page."""

from wsnet.chat.app import ChatApp
from wsnet.chat.protocol import (
    MAX_TEXT_CHARS,
    ChatError,
    SendMessage,
    encode_event,
    parse_command,
    valid_name,
    valid_room,
)
from wsnet.chat.rooms import Chat, ChatSettings

__all__ = [
    "ChatApp",
    "ChatSettings",
    "Chat",
    "ChatError",
    "SendMessage",
    "MAX_TEXT_CHARS",
    "encode_event",
    "parse_command",
    "valid_name",
    "valid_room",
]
