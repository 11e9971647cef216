"""The HTTP side of a connection, without sockets: read one request with h11 and
decide what it gets — a WebSocket (101), or a complete HTTP response.

``decide_upgrade`` is a pure function from a request to a decision, so the whole
table of RFC 6455 §4.2.1 checks is tested without I/O. ``HttpReader`` feeds h11
and, once the 101 is sent, hands over the bytes that arrived behind the request
(an eager client's first frames), which must reach the WebSocket parser.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, replace

import h11

from wsnet._deflate import DeflateParams, negotiate
from wsnet._http import Request, Response

__all__ = ["Accept", "HttpReader", "accept_token", "decide_upgrade", "is_upgrade"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_VERSION_HEADER = ("Sec-WebSocket-Version", "13")


def accept_token(key: str | bytes) -> str:
    """``Sec-WebSocket-Accept`` for a key (RFC 6455 §4.2.2, step 5.4)."""
    raw = key.encode("latin-1") if isinstance(key, str) else key
    return base64.b64encode(hashlib.sha1(raw + _GUID).digest()).decode()


@dataclass(frozen=True, slots=True)
class Accept:
    """The upgrade is accepted: the 101's headers, and the agreed deflate (if any)."""

    headers: tuple[tuple[str, str], ...]
    deflate: DeflateParams | None


def is_upgrade(request: Request) -> bool:
    """Does the request ask for a WebSocket? Other upgrades (h2c, ...) may be
    ignored and served as plain HTTP/1.1 (RFC 9110 §7.8)."""
    return "websocket" in request.header_tokens("upgrade")


def _origin_allowed(request: Request, allowed: tuple[str, ...]) -> bool:
    """No Origin: not a browser, and nothing to check (any client may forge one).
    Otherwise an exact, case-insensitive match of scheme://host[:port]; ``self``
    is the origin this request was made to (its scheme, as a trusted proxy
    reports it, and its Host)."""
    origin = request.header("origin")
    if origin is None:
        return True
    origin = origin.strip().lower().rstrip("/")
    own = f"{request.scheme}://{(request.header('host') or '').strip().lower()}"
    return any(origin == (own if a == "self" else a.strip().lower().rstrip("/"))
               for a in allowed)


def _declares_body(request: Request) -> bool:
    if request.header("transfer-encoding") is not None:
        return True
    length = request.header("content-length")
    return length is not None and not (length.isdigit() and int(length) == 0)


def _valid_key(values: list[str]) -> bool:
    if len(values) != 1:
        return False
    key = values[0].strip()
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def decide_upgrade(
    request: Request,
    *,
    ws_paths: tuple[str, ...] = ("/", "/ws"),
    deflate: bool = True,
    impose_client_no_context: bool = True,
    at_capacity: bool = False,
    ip_at_capacity: bool = False,
    allowed_origins: tuple[str, ...] = (),
) -> Accept | Response:
    """RFC 6455 §4.2.1 and §4.2.2 for one upgrade request.

    Checks run in a fixed order, and the first failure decides the answer, so an
    answer says the first thing the client must fix.
    """
    if request.method != "GET":
        return Response.text(405, "WebSocket upgrade needs GET", ("Allow", "GET"))
    if request.path not in ws_paths:
        return Response.text(404, "no WebSocket endpoint at this path")
    if request.http_version != "1.1":
        return Response.text(400, "WebSocket upgrade needs HTTP/1.1")
    if _declares_body(request):
        return Response.text(400, "WebSocket upgrade request must not have a body")
    if "websocket" not in request.header_tokens("upgrade"):
        return Response.text(400, "Upgrade header must name websocket")
    if "upgrade" not in request.header_tokens("connection"):
        return Response.text(400, "Connection header must contain Upgrade")
    if request.header("sec-websocket-version") != "13":
        return Response.text(426, "Sec-WebSocket-Version must be 13", _VERSION_HEADER)
    keys = request.header_values("sec-websocket-key")
    if not _valid_key(keys):
        return Response.text(400, "Sec-WebSocket-Key must be base64 of 16 bytes")
    if allowed_origins and not _origin_allowed(request, allowed_origins):
        # Cross-site WebSocket hijacking: a page elsewhere must not ride on this
        # browser's cookies. RFC 6455 §10.2.
        return Response.text(403, "origin not allowed")
    if at_capacity:
        return Response.text(503, "server at connection limit, retry later", ("Retry-After", "5"))
    if ip_at_capacity:
        return Response.text(429, "too many connections from your address", ("Retry-After", "5"))

    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_token(keys[0].strip())),
    ]
    agreed = None
    if deflate:
        offers = request.header_values("sec-websocket-extensions")
        chosen = negotiate(offers, impose_client_no_context) if offers else None
        if chosen is not None:
            agreed, header = chosen
            headers.append(("Sec-WebSocket-Extensions", header))
    return Accept(tuple(headers), agreed)


_TOO_LARGE = Response.text(431, "request header fields too large")
_TOO_BIG = Response.text(413, "request body too large")


def _decode(value: bytes) -> str:
    return value.decode("latin-1")


class HttpReader:
    """h11 for one request: bytes in, a ``Request`` (or an error response) out.

    An upgrade, or a request without a body, is returned as soon as its head is
    complete; a plain request with a body once the body is in, refused with 413
    when it declares or reaches more than ``max_body_bytes``.
    """

    __slots__ = ("_h11", "_fed", "_max", "_max_body", "_head", "_body", "_size", "request")

    def __init__(self, max_header_bytes: int, max_body_bytes: int = 0) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self._fed = 0
        self._max = max_header_bytes
        self._max_body = max_body_bytes
        self._head: Request | None = None  # a plain request whose body is on its way
        self._body: list[bytes] = []
        self._size = 0
        self.request: Request | None = None

    def feed(
        self, data: bytes, peer: tuple[str, int] | None = None,
    ) -> Request | Response | None:
        """Feed bytes (``b""`` at EOF). Returns the request once it is complete
        (see the class), a 400/413/431 response for a broken or oversized one,
        or None while more bytes are needed (or at EOF: then ``closed`` is True).
        """
        conn = self._h11
        self._fed += len(data)
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if isinstance(event, h11.Request):
                    done = self._started(event, peer)
                    if done is not None:
                        return done
                elif isinstance(event, h11.Data):
                    self._size += len(event.data)
                    if self._size > self._max_body:
                        return _TOO_BIG
                    self._body.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage) and self._head is not None:
                    self.request = replace(self._head, body=b"".join(self._body))
                    self._head, self._body = None, []
                    return self.request
                else:  # NEED_DATA, or the peer closed: nothing (more) yet
                    return None
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                return _TOO_LARGE
            return Response.text(400, "malformed HTTP request")

    def _started(
        self, event: h11.Request, peer: tuple[str, int] | None,
    ) -> Request | Response | None:
        # h11 bounds only an incomplete head; one that arrived whole in a
        # single read is measured here against the same limit.
        if self._fed - len(self._h11.trailing_data[0]) > self._max:
            return _TOO_LARGE
        request = Request(
            method=_decode(event.method),
            target=_decode(event.target),
            headers=tuple((_decode(k), _decode(v)) for k, v in event.headers),
            http_version=_decode(event.http_version),
            peer=peer,
        )
        if is_upgrade(request) or not _declares_body(request):
            self.request = request  # decide_upgrade refuses an upgrade's body
            return request
        length = request.header("content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            return _TOO_BIG  # refused before a byte of it is read
        self._head = request
        return None

    def leftover(self) -> bytes:
        """What arrived after the request: the next one's start (keep-alive)."""
        return self._h11.trailing_data[0]

    def hold(self, data: bytes) -> bool:
        """Keep bytes that arrive while the request waits for its answer; False
        once they are more than a request may be (then drop the peer)."""
        self._h11.receive_data(data)
        return len(self._h11.trailing_data[0]) <= self._max + self._max_body

    @property
    def closed(self) -> bool:
        return self._h11.their_state in (h11.CLOSED, h11.ERROR)

    def switch(self, accept: Accept) -> tuple[bytes, bytes]:
        """The 101's bytes, and the bytes that came after the request, which
        belong to the WebSocket. The 101 is rendered here, not by h11: its
        headers are our own (``decide_upgrade``), and h11's event and state
        machinery was a tenth of a handshake's cost; h11 is done with this
        connection either way (decide_upgrade refused bodies, so nothing of the
        request is left for it to read)."""
        lines = ["HTTP/1.1 101 Switching Protocols", *(f"{k}: {v}" for k, v in accept.headers)]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head, self._h11.trailing_data[0]
