"""The chat's HTTP API for backends (README, "The HTTP API"): publish into a
room, read a room's history and presence, list rooms, disconnect a user.

Off unless an API key is configured; every call then carries
``Authorization: Bearer <key>``, compared in constant time, and a wrong or
missing key gets the same 401 either way. Bodies are JSON objects, checked by
the rules the WebSocket path uses. A request goes in, a ``Response`` (or a
``Pending``, answered once the tick has committed a publish, or Redis has
replied) comes out; nothing here touches a socket.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from wsnet import Pending, Request, Response
from wsnet.chat.backplane import Directory, RoomPeek
from wsnet.chat.presence import snapshot_event
from wsnet.chat.protocol import ChatError, checked_text, valid_cid, valid_name, valid_room
from wsnet.chat.rooms import Chat

__all__ = ["ChatApi"]

PREFIX = "/api/"
#: History one read returns at most (``limit``), and by default.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
#: The sender shown for a publish without ``from``.
DEFAULT_FROM = "api"

Route = Callable[[Request, str | None], "Response | Pending"]


def error(status: int, code: str, detail: str, *headers: tuple[str, str]) -> Response:
    """The API's error shape: ``{"error": code, "detail": words}``."""
    body = json.dumps({"error": code, "detail": detail}, separators=(",", ":")).encode()
    return Response(status, body, "application/json", headers)


def ok(value: object) -> Response:
    return Response.json(200, value)


_UNAUTHORIZED = error(401, "unauthorized", "a valid API key is required",
                      ("WWW-Authenticate", 'Bearer realm="wsnet"'))


class ChatApi:
    """The ``/api/`` routes over one ``Chat``; ``disconnect(name)`` closes a
    user's connections (the server's part) and says how many."""

    def __init__(self, chat: Chat[Any], key: bytes, disconnect: Callable[[str], int]) -> None:
        if not key:
            raise ValueError("the API key must not be empty")
        self._chat = chat
        #: With a remote backplane, reads and disconnects span every node.
        backplane = chat.backplane
        self._directory = backplane if backplane.remote and isinstance(backplane, Directory) \
            else None
        self._expected = b"Bearer " + key
        self._disconnect = disconnect
        self._routes: dict[str, tuple[tuple[str, ...], Route]] = {
            "publish": (("POST",), self._publish),
            "disconnect": (("POST",), self._kick),
            "rooms": (("GET", "HEAD"), self._rooms),
            "history": (("GET", "HEAD"), self._history),
            "presence": (("GET", "HEAD"), self._presence),
        }

    def answer(self, request: Request) -> Response | Pending | None:
        """The answer to an ``/api/`` request; None for any other path."""
        path = request.path
        if not path.startswith(PREFIX):
            return None
        given = (request.header("authorization") or "").encode("latin-1")
        if not hmac.compare_digest(given, self._expected):
            return _UNAUTHORIZED
        found = _route(path[len(PREFIX):])
        if found is None:
            return error(404, "not_found", "no such API endpoint")
        name, room = found
        methods, handler = self._routes[name]
        if request.method not in methods:
            return error(405, "method_not_allowed", f"use {' or '.join(methods)}",
                         ("Allow", ", ".join(methods)))
        if room is not None and not valid_room(room):
            return error(404, "not_found", "no such room")
        return handler(request, room)

    # -- writes --------------------------------------------------------------

    def _publish(self, request: Request, _: str | None) -> Response | Pending:
        body = _json_body(request)
        if isinstance(body, Response):
            return body
        room, text = body.get("room"), body.get("text")
        sender, key = body.get("from", DEFAULT_FROM), body.get("idempotency_key")
        if not valid_room(room):
            return error(400, "bad_room", "'room' must be a room name")
        if not isinstance(text, str):
            return error(400, "bad_command", "'text' must be a string")
        if not valid_name(sender):
            return error(400, "bad_name", "'from' must be a name (1-32 letters, digits, ...)")
        if key is not None and not valid_cid(key):
            return error(400, "bad_command", "'idempotency_key' must be 1-64 printable ASCII")
        checked = checked_text(room, text, None)
        if isinstance(checked, ChatError):
            return error(400, checked.error, checked.detail)
        pending = Pending()

        def done(seq: int, epoch: str) -> None:
            pending.answer(ok({"room": room, "epoch": epoch, "seq": seq}))

        def failed() -> None:
            pending.answer(error(503, "unavailable", "cannot store or publish now; try again",
                                 ("Retry-After", "1")))

        self._chat.publish(room, sender, text, key, done=done, failed=failed)
        return pending

    def _kick(self, request: Request, _: str | None) -> Response:
        body = _json_body(request)
        if isinstance(body, Response):
            return body
        name = body.get("name")
        if not valid_name(name):
            return error(400, "bad_name", "'name' must be a user's name")
        closed = self._disconnect(name)
        if self._directory is not None:
            self._directory.kick(name)  # and every other node closes its own
        return ok({"name": name, "disconnected": closed})

    # -- reads ----------------------------------------------------------------

    def _rooms(self, request: Request, _: str | None) -> Response | Pending:
        """Rooms with members (on any node), and how many."""
        if self._directory is not None:
            pending = Pending()

            def listed(sizes: list[tuple[str, int]] | Exception) -> None:
                pending.answer(_unavailable() if isinstance(sizes, Exception) else
                               ok({"rooms": [{"room": r, "members": n} for r, n in sizes]}))

            self._directory.room_sizes(listed)
            return pending
        rooms = [{"room": r.name, "members": r.size}
                 for r in sorted(self._chat.rooms.values(), key=lambda r: r.name) if r.size]
        return ok({"rooms": rooms})

    def _history(self, request: Request, name: str | None) -> Response | Pending:
        query = request.query
        since = _integer(query.get("since", "0"), 0, None)
        limit = _integer(query.get("limit", str(DEFAULT_LIMIT)), 1, MAX_LIMIT)
        if since is None or limit is None:
            return error(400, "bad_command",
                         f"'since' is an integer >= 0, 'limit' one of 1-{MAX_LIMIT}")
        assert name is not None
        if self._directory is not None:
            pending = Pending()
            self._directory.peek(name, since, limit,
                                 lambda peek: pending.answer(_history_answer(name, peek)))
            return pending
        room = self._chat.rooms.get(name)
        if room is None:
            return error(404, "not_found", "no such room")
        events: list[str] = []
        for data in room.history.after(since):
            if len(events) == limit:
                break
            events.append(data.decode())
        return _history_answer(name, RoomPeek(room.epoch, room.seq, room.first_seq, events, []))

    def _presence(self, request: Request, name: str | None) -> Response | Pending:
        assert name is not None
        limit = self._chat.settings.presence_limit
        if self._directory is not None:
            pending = Pending()

            def peeked(peek: RoomPeek | Exception | None) -> None:
                if peek is None or isinstance(peek, Exception):
                    pending.answer(_history_answer(name, peek))  # 404 or 503
                    return
                answer: dict[str, Any] = {"room": name, "count": len(peek.members)}
                if len(peek.members) <= limit:
                    answer["members"] = [{"id": i, "name": n} for i, n in peek.members]
                pending.answer(ok(answer))

            self._directory.peek(name, 0, 1, peeked)
            return pending
        room = self._chat.rooms.get(name)
        if room is None:
            return error(404, "not_found", "no such room")
        snapshot = snapshot_event(room, numbering=False)
        del snapshot["type"]
        return ok(snapshot)


def _unavailable() -> Response:
    return error(503, "unavailable", "the chat backplane did not answer; try again",
                 ("Retry-After", "1"))


def _history_answer(name: str, peek: RoomPeek | Exception | None) -> Response:
    """``{"room", "epoch", "seq", "first", "messages": [...]}``: the stored
    events are copied in as they are, not decoded and encoded again."""
    if peek is None:
        return error(404, "not_found", "no such room")
    if isinstance(peek, Exception):
        return _unavailable()
    head = json.dumps({"room": name, "epoch": peek.epoch, "seq": peek.seq, "first": peek.first},
                      ensure_ascii=False, separators=(",", ":"))
    body = head[:-1] + ',"messages":[' + ",".join(peek.events) + "]}"
    return Response(200, body.encode(), "application/json")


def _route(rest: str) -> tuple[str, str | None] | None:
    """``publish`` -> ("publish", None); ``rooms/dev/history`` -> ("history", "dev")."""
    parts = rest.split("/")
    if parts in (["publish"], ["disconnect"], ["rooms"]):
        return parts[0], None
    if len(parts) == 3 and parts[0] == "rooms" and parts[2] in ("history", "presence"):
        try:
            return parts[2], unquote(parts[1], errors="strict")
        except UnicodeDecodeError:
            return None
    return None


def _json_body(request: Request) -> dict[str, Any] | Response:
    kind = (request.header("content-type") or "").split(";")[0].strip().lower()
    if kind != "application/json":
        return error(415, "unsupported_media_type", "send the body as application/json")
    try:
        body = json.loads(request.body.decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        return error(400, "bad_json", "the body is not valid JSON in UTF-8")
    if not isinstance(body, dict):
        return error(400, "bad_json", "the body must be a JSON object")
    return body


def _integer(text: str, low: int, high: int | None) -> int | None:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    value = int(text)
    return value if value >= low and (high is None or value <= high) else None
