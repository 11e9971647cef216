"""HTTP/1.1 values shared by the upgrade decision and the server: requests as the
application sees them, the responses we write, and ``Pending``, a response an
application gives later.

Responses are rendered by hand rather than through h11 because we send them in
states h11 refuses (after its parser has failed on a malformed request). A plain
request answered normally keeps its connection open for the next (HTTP/1.1
keep-alive); errors, refused upgrades and HTTP/1.0 close it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

__all__ = ["Pending", "Request", "Response", "check_header", "keep_alive", "render_response"]

#: RFC 9110 §5.6.2: a header name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: Bytes that would end a header line early or split the response (RFC 9110
#: §5.5): CR, LF and NUL never belong in a value we write.
_FORBIDDEN = re.compile(r"[\r\n\x00]")


def check_header(name: str, value: str) -> None:
    """Raise ValueError unless ``name: value`` can be written as one header line.

    Applications hand us header values; one with CR or LF would let its content
    add headers or a body of its own (response splitting), so it is refused
    where it is given, before anything is written.
    """
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise ValueError(f"invalid header name {name!r}: it must be an RFC 9110 token")
    if not isinstance(value, str) or _FORBIDDEN.search(value):
        raise ValueError(f"invalid value for header {name!r}: {value!r} contains CR, LF or NUL")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(
            f"invalid value for header {name!r}: {value!r} is not Latin-1",
        ) from None


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request head, decoded for applications.

    Header names are lower-case; values are decoded as Latin-1, so any byte a
    peer sends survives and nothing raises on non-ASCII input.
    """

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    http_version: str = "1.1"
    peer: tuple[str, int] | None = None
    #: The body of a plain request (at most ``Config.max_body_bytes``); upgrade
    #: requests have none.
    body: bytes = b""
    #: "https" over TLS (or when a trusted proxy says so), else "http".
    scheme: str = "http"

    @property
    def path(self) -> str:
        """The path, also from an absolute-form target (RFC 9112 §3.2.2)."""
        path = self.target.split("?", 1)[0]
        if "://" in path:
            path = urlsplit(path).path or "/"
        return path

    @property
    def query(self) -> dict[str, str]:
        """The query string's parameters; the first value wins for repeats."""
        _, _, qs = self.target.partition("?")
        return {k: v[0] for k, v in parse_qs(qs, keep_blank_values=True).items()}

    def header(self, name: str) -> str | None:
        """All values of one header joined by ", " (RFC 9110 §5.3), or None."""
        name = name.lower()
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def header_tokens(self, name: str) -> list[str]:
        """A comma-separated header as lower-case tokens."""
        tokens: list[str] = []
        for value in self.header_values(name):
            tokens.extend(t.strip().lower() for t in value.split(",") if t.strip())
        return tokens


@dataclass(frozen=True, slots=True)
class Response:
    """A complete HTTP response for a plain request or a refused upgrade.

    Header names and values (``content_type`` too) are checked when the response
    is made: a ValueError names the bad one.
    """

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 999:
            raise ValueError(f"invalid HTTP status {self.status!r}")
        check_header("Content-Type", self.content_type)
        for name, value in self.headers:
            check_header(name, value)

    @classmethod
    def text(cls, status: int, text: str, *headers: tuple[str, str]) -> Response:
        """A plain-text response: ``text`` and a newline, in UTF-8."""
        return cls(status, (text + "\n").encode(), headers=headers)

    @classmethod
    def json(cls, status: int, value: object) -> Response:
        """``value`` as compact JSON."""
        body = json.dumps(value, separators=(",", ":")).encode()
        return cls(status, body, content_type="application/json")


class Pending:
    """A response the application gives later: ``on_http`` returns one at once
    and calls ``answer`` when it knows the response (after a round trip to
    Redis, or once the tick's commit has made a write durable). The connection
    reads nothing more until then; past ``Config.handshake_timeout`` it gets a
    503 instead."""

    __slots__ = ("_deliver", "response")

    def __init__(self) -> None:
        self._deliver: Callable[[Response], None] | None = None
        self.response: Response | None = None

    def answer(self, response: Response) -> None:
        if self.response is not None:
            raise RuntimeError("this request was answered already")
        self.response = response
        deliver, self._deliver = self._deliver, None
        if deliver is not None:
            deliver(response)

    def bind(self, deliver: Callable[[Response], None]) -> None:
        """The server's side: where the response goes (now, if it is known)."""
        if self.response is not None:
            deliver(self.response)
        else:
            self._deliver = deliver

    def cancel(self) -> None:
        """The connection is gone, or waited too long: a late answer goes nowhere."""
        self._deliver = None


def keep_alive(request: Request) -> bool:
    """May the connection carry another request after this one (RFC 9112 §9.3)?"""
    return request.http_version == "1.1" and "close" not in request.header_tokens("connection")


def render_response(
    response: Response, *, head_only: bool = False, keep_alive: bool = False,
) -> bytes:
    """The response's bytes; unless ``keep_alive``, closing the connection after it."""
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    lines.append(f"Content-Type: {response.content_type}")
    lines.append(f"Content-Length: {len(response.body)}")
    if not keep_alive:
        lines.append("Connection: close")
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body
