"""What the chat needs from the server's loop, declared as protocols.

``wsnet.Server`` satisfies ``Loop``; tests give a fake one. Declaring it here
keeps the chat's modules free of the server and reactor imports, so they load
and run without sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["ByteStream", "Cancellable", "Loop", "StreamEvents"]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class StreamEvents(Protocol):
    """What a stream's user hears (``wsnet.Server.open_stream``)."""

    def stream_connected(self) -> None: ...
    def stream_data(self, data: bytes) -> None: ...
    def stream_lost(self, exc: OSError | None) -> None: ...


class ByteStream(Protocol):
    def write(self, data: bytes) -> None: ...
    def flush_blocking(self, timeout: float) -> bool: ...
    def close(self) -> None: ...


class Loop(Protocol):
    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable: ...
    def open_stream(
        self, host: str, port: int, protocol: StreamEvents, *, timeout: float,
    ) -> ByteStream: ...
