"""The backend HTTP API without sockets (``wsnet.chat.api.ChatApi`` over a
``Chat``): the key, the routes and their errors, and a publish that is answered
only once the tick has committed it. Over real sockets: tests/test_live_api.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.harness import Harness
from test_store import Node

from wsnet import Pending, Request, Response
from wsnet.chat.api import ChatApi

KEY = b"an API key, long enough"
AUTH = ("authorization", "Bearer " + KEY.decode())
JSON = ("content-type", "application/json")


def request(method: str, target: str, body: object = None, *headers: tuple[str, str]) -> Request:
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    return Request(method, target, headers, body=data)


class Backend:
    def __init__(self, h: Harness) -> None:
        self.h = h
        self.kicked: list[str] = []
        self.api = ChatApi(h.chat, KEY, self.kick)

    def kick(self, name: str) -> int:
        self.kicked.append(name)
        return 1

    def call(self, method: str, target: str, body: object = None,
             *headers: tuple[str, str]) -> Response | Pending:
        answer = self.api.answer(request(method, target, body, AUTH, JSON, *headers))
        assert answer is not None
        return answer


def decoded(response: Response | Pending | None) -> tuple[int, Any]:
    if isinstance(response, Pending):
        assert response.response is not None, "not answered yet"
        response = response.response
    assert response is not None
    return response.status, json.loads(response.body)


def test_only_api_paths_are_its_and_a_wrong_key_is_told_nothing() -> None:
    api = ChatApi(Harness().chat, KEY, lambda name: 0)
    assert api.answer(request("GET", "/")) is None
    assert api.answer(request("GET", "/apix")) is None
    answers = [api.answer(request("GET", "/api/rooms", None, *h)) for h in
               [(), (("authorization", "Bearer wrong"),), (("authorization", KEY.decode()),),
                (("authorization", "bearer " + KEY.decode()),)]]
    assert all(isinstance(a, Response) for a in answers)
    bodies = {(a.status, a.body) for a in answers if isinstance(a, Response)}
    assert len(bodies) == 1 and next(iter(bodies))[0] == 401  # the same, whatever was wrong
    with pytest.raises(ValueError):
        ChatApi(Harness().chat, b"", lambda name: 0)


def test_a_publish_is_answered_after_the_ticks_commit_and_once_per_key(tmp_path: Path) -> None:
    node = Node(tmp_path / "s")
    backend = Backend(node.h)
    node.h.connect("ann", "dev")
    node.h.tick()
    body = {"room": "dev", "text": "deploy done", "from": "ci-bot", "idempotency_key": "k1"}
    first = backend.call("POST", "/api/publish", body)
    assert isinstance(first, Pending) and first.response is None  # not committed yet
    got = node.h.tick()
    assert decoded(first) == (200, {"room": "dev", "epoch": "e1", "seq": 1})
    event = next(e for e in got["ann"] if e["type"] == "message")
    assert (event["from"], event["from_id"], event["text"]) == ("ci-bot", "api", "deploy done")
    again = backend.call("POST", "/api/publish", body)
    assert not any(e["type"] == "message" for e in node.h.tick().get("ann", []))
    assert decoded(again) == decoded(first)
    # The key outlives a restart, as history does.
    node.restart()
    backend = Backend(node.h)
    after = backend.call("POST", "/api/publish", body)
    node.h.tick()
    assert decoded(after) == decoded(first)


def test_a_publish_the_store_cannot_keep_is_503_and_not_seen(tmp_path: Path) -> None:
    node = Node(tmp_path / "s")
    backend = Backend(node.h)
    node.h.connect("ann", "dev")
    node.h.tick()
    db = node.store.connection
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    refused = backend.call("POST", "/api/publish", {"room": "dev", "text": "x" * 4000})
    refused_too = backend.call("POST", "/api/publish", {"room": "dev", "text": "y" * 4000})
    got = node.h.tick()
    assert not any(e["type"] == "message" for e in got.get("ann", []))
    assert decoded(refused)[0] == decoded(refused_too)[0] == 503
    assert decoded(refused)[1]["error"] == "unavailable"


def test_reads_answer_from_the_rooms() -> None:
    h = Harness(history=3)
    backend = Backend(h)
    h.connect("ann", "dev")
    h.tick()
    for i in range(5):
        backend.call("POST", "/api/publish", {"room": "dev", "text": f"m{i}"})
    h.tick()
    status, history = decoded(backend.call("GET", "/api/rooms/dev/history?since=3&limit=1"))
    assert status == 200 and (history["seq"], history["first"]) == (5, 3)
    assert [m["text"] for m in history["messages"]] == ["m3"]
    status, presence = decoded(backend.call("GET", "/api/rooms/dev/presence"))
    assert presence == {"room": "dev", "count": 1, "members": [{"id": "ann", "name": "ann"}]}
    assert decoded(backend.call("GET", "/api/rooms")) == (
        200, {"rooms": [{"room": "dev", "members": 1}]})
    assert decoded(backend.call("POST", "/api/disconnect", {"name": "ann"})) == (
        200, {"name": "ann", "disconnected": 1})
    assert backend.kicked == ["ann"]


@pytest.mark.parametrize(
    ("method", "target", "body", "status", "code"),
    [
        ("POST", "/api/publish", b"\xff", 400, "bad_json"),
        ("POST", "/api/publish", {"room": "dev"}, 400, "bad_command"),
        ("POST", "/api/publish", {"room": "dev", "text": "x", "idempotency_key": "a b"}, 400,
         "bad_command"),
        ("POST", "/api/publish", {"room": "dev", "text": "\ud800"}, 400, "bad_text"),
        ("GET", "/api/rooms/%ff/history", None, 404, "not_found"),
        ("GET", "/api/rooms/a b/history", None, 404, "not_found"),
        ("GET", "/api/rooms/dev/history?limit=1001", None, 400, "bad_command"),
        ("GET", "/api/rooms/dev/history?limit=0", None, 400, "bad_command"),
        ("PUT", "/api/publish", None, 405, "method_not_allowed"),
        ("GET", "/api/rooms/dev", None, 404, "not_found"),
    ],
)
def test_bad_requests(method: str, target: str, body: object, status: int, code: str) -> None:
    h = Harness()
    h.connect("ann", "dev")
    got = decoded(Backend(h).call(method, target, body))
    assert (got[0], got[1]["error"]) == (status, code)


def test_a_body_that_is_not_json_by_its_type_is_415() -> None:
    api = ChatApi(Harness().chat, KEY, lambda name: 0)
    for kind in ("text/plain", "application/jsonx", ""):
        headers = [AUTH] + ([("content-type", kind)] if kind else [])
        answer = api.answer(request("POST", "/api/publish", {"room": "a", "text": "b"}, *headers))
        assert decoded(answer)[0] == 415
    ok = api.answer(request("POST", "/api/publish", {"room": "a", "text": "b"}, AUTH,
                            ("content-type", "Application/JSON; charset=utf-8")))
    assert isinstance(ok, Pending)
