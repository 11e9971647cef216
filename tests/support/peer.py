"""A wsproto client as the independent peer of a ``Session``, and the helpers
that drive a Session on in-memory bytes. Nothing here opens a socket.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate

from wsnet._deflate import DeflateParams
from wsnet._outbox import Outbox
from wsnet._session import Session


def client_deflate(response_header: str) -> PerMessageDeflate:
    """A client-side wsproto PerMessageDeflate configured by the server's
    ``Sec-WebSocket-Extensions`` answer, as wsproto's own handshake would."""
    ext = PerMessageDeflate()
    ext.finalize(response_header)
    assert ext.enabled()
    return ext


class ClientPeer:
    """A wsproto CLIENT connection: encodes masked client frames and decodes
    the server's bytes into wsproto events."""

    def __init__(self, deflate_response: str | None = None) -> None:
        extensions: list[Extension] = []
        if deflate_response is not None:
            extensions.append(client_deflate(deflate_response))
        self.conn = Connection(ConnectionType.CLIENT, extensions=extensions)

    @property
    def state(self) -> ConnectionState:
        return self.conn.state

    def text(self, data: str, *, fin: bool = True) -> bytes:
        return self.conn.send(TextMessage(data=data, message_finished=fin))

    def binary(self, data: bytes, *, fin: bool = True) -> bytes:
        return self.conn.send(BytesMessage(data=data, message_finished=fin))

    def ping(self, payload: bytes = b"") -> bytes:
        return self.conn.send(Ping(payload=payload))

    def pong(self, payload: bytes = b"") -> bytes:
        return self.conn.send(Pong(payload=payload))

    def close(self, code: int | None = 1000, reason: str | None = None) -> bytes:
        return self.conn.send(CloseConnection(code=code, reason=reason))  # type: ignore[arg-type]

    def receive(self, data: bytes) -> list[Event]:
        """Decode server bytes into events, with partial messages joined."""
        self.conn.receive_data(data)
        return join_messages(self.conn.events())

    def messages(self, data: bytes) -> list[str | bytes]:
        out: list[str | bytes] = []
        for event in self.receive(data):
            if isinstance(event, TextMessage):
                out.append(event.data)
            elif isinstance(event, BytesMessage):
                out.append(bytes(event.data))
        return out


def join_messages(events: Iterable[Event]) -> list[Event]:
    """wsproto streams messages in chunks; join them into one event each."""
    out: list[Event] = []
    pending: list[TextMessage | BytesMessage] = []
    for event in events:
        if isinstance(event, TextMessage | BytesMessage):
            pending.append(event)
            if event.message_finished:
                if isinstance(event, TextMessage):
                    text = "".join(p.data for p in pending if isinstance(p, TextMessage))
                    out.append(TextMessage(data=text))
                else:
                    raw = b"".join(bytes(p.data) for p in pending if isinstance(p, BytesMessage))
                    out.append(BytesMessage(data=raw))
                pending = []
        else:
            out.append(event)
    assert not pending, "server output ended inside a message"
    return out


# ----------------------------------------------------------------------------
# Driving a Session
# ----------------------------------------------------------------------------


def drain(outbox: Outbox) -> bytes:
    """Take everything queued in an outbox, as the reactor's send would."""
    data = b"".join(bytes(chunk) for chunk in outbox.chunks)
    outbox.consume(outbox.nbytes)
    return data


@dataclass
class SessionRun:
    """What a Session did with some input: everything a test compares."""

    messages: list[str | bytes] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    is_open: bool = True
    closing_done: bool = False
    parser_dead: bool = False
    output: bytes = b""


def new_session(
    max_message_bytes: int = 1 << 20, deflate: DeflateParams | None = None,
) -> Session:
    return Session(Outbox(), max_message_bytes=max_message_bytes, deflate=deflate)


def feed_session(
    chunks: Iterable[bytes | None],
    *,
    session: Session | None = None,
    max_message_bytes: int = 1 << 20,
    deflate: DeflateParams | None = None,
) -> SessionRun:
    """Feed chunks (``None`` = EOF) to a (new) Session and record the outcome."""
    if session is None:
        session = new_session(max_message_bytes, deflate)
    messages: list[str | bytes] = []
    for chunk in chunks:
        messages.extend(session.receive(chunk))
    return SessionRun(
        messages=messages,
        close_code=session.close_code,
        close_reason=session.close_reason,
        is_open=session.is_open,
        closing_done=session.closing_done,
        parser_dead=session.parser_dead,
        output=drain(session.out),
    )


def close_code_of(server_output: bytes) -> int | None:
    """The code of the close frame a fresh client finds in the server's bytes
    (None if there is no close frame)."""
    events = ClientPeer().receive(server_output)
    codes = [int(e.code) for e in events if isinstance(e, CloseConnection)]
    assert len(codes) <= 1, events
    return codes[0] if codes else None
