"""Echo every message back unchanged: the application conformance suites run
against (Autobahn's fuzzing client sends messages up to 16 MiB)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from wsnet.server import Connection, Handler

__all__ = ["EchoApp"]


class EchoApp(Handler):
    config_defaults: ClassVar[Mapping[str, object]] = {
        # An echo is a reply, not a broadcast: batching would only add latency.
        "flush_interval": 0.0,
        "max_message_bytes": 16 << 20,
        # Conformance suites send 4 MiB in 64-byte fragments, and thousands of
        # messages back to back.
        "max_fragments": 1 << 17,
        "rate_limit": 0.0,
        # Room for one echoed maximal message plus frame headers.
        "outbox_limit": 32 << 20,
    }

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        conn.send(data)
