"""Private rooms, direct messages, typing and the backend HTTP API over real
sockets: ``python -m wsnet`` in a subprocess, ``websockets`` as the chat
client and the standard library's ``http.client`` (HTTP/1.1, keep-alive) as
the backend. The rules themselves are tested without sockets in
tests/test_access.py and tests/test_api.py."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import websockets
from support.chat import ChatClient as Client
from support.chat import kind, run
from support.procs import RedisServer
from support.rawclient import RawClient
from support.servers import InProcessFactory, ServerFactory, ServerProcess

from wsnet.chat import ChatApp
from wsnet.tokens import Grant, make_token

pytestmark = pytest.mark.live

SECRET = "a shared secret for tokens, 32b."
KEY = "k" * 24 + "-api-key"
Event = dict[str, Any]


@pytest.fixture
def secrets(tmp_path: Path) -> tuple[Path, Path]:
    secret, key = tmp_path / "secret", tmp_path / "api-key"
    secret.write_text(SECRET + "\n")
    key.write_text(KEY + "\n")
    return secret, key


@pytest.fixture
def server(server_factory: ServerFactory, secrets: tuple[Path, Path]) -> ServerProcess:
    secret, key = secrets
    return server_factory("--auth-secret-file", str(secret), "--api-key-file", str(key))


def token(name: str, *grants: Grant) -> str:
    return make_token(SECRET.encode(), name, int(time.time()) + 600, grants)


async def user(server: ServerProcess, name: str, room: str, *grants: Grant) -> Client:
    return await Client.open(server, token=token(name, *grants), room=room)


class Api:
    """One kept-alive HTTP/1.1 connection to the API, as a backend holds it."""

    def __init__(self, port: int, key: str | None = KEY) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        self.key = key

    def call(
        self, method: str, path: str, body: object = None, *,
        content_type: str = "application/json", key: str | None = "",
    ) -> tuple[int, Any, http.client.HTTPResponse]:
        headers = {}
        key = self.key if key == "" else key
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        json_body = response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(raw) if json_body else raw.decode(), response

    def close(self) -> None:
        self.conn.close()


# -- private rooms and direct messages ------------------------------------------


def test_a_minted_grant_opens_a_private_room_that_stays_closed_to_others(
    server: ServerProcess, secrets: tuple[Path, Path],
) -> None:
    minted = subprocess.run(
        [sys.executable, "-m", "wsnet", "--auth-secret-file", str(secrets[0]),
         "--mint-token", "ann", "--room", "private:ops", "--read-only-room", "private:news"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()

    async def scenario() -> None:
        ann = await Client.open(server, token=minted, room="private:ops")
        assert (await ann.until(kind("presence", room="private:ops")))["count"] == 1
        await ann.send({"type": "message", "room": "private:ops", "text": "ops only"})
        await ann.message("ops only")
        bob = await user(server, "bob", "private:ops")
        refused = await bob.error()
        nowhere = await user(server, "cy", "private:empty")
        assert (await nowhere.error())["detail"] == refused["detail"]
        assert refused["error"] == "forbidden" and refused["room"] == "private:ops"
        await bob.send({"type": "join", "room": "private:ops", "since": 0})
        assert (await bob.error())["error"] == "forbidden"
        await bob.send({"type": "join", "room": "lobby"})
        await bob.send({"type": "message", "room": "lobby", "text": "sync"})
        await bob.message("sync")  # a later tick: still nothing of private:ops
        assert not [e for e in bob.events if e.get("room") == "private:ops"
                    and e["type"] != "error"]
        assert not [e for e in ann.events if e["type"] == "join"]  # ann saw nobody try
        # Read-only: in, reads, cannot write.
        await ann.send({"type": "join", "room": "private:news"})
        await ann.until(kind("presence", room="private:news"))
        await ann.send({"type": "message", "room": "private:news", "text": "x", "cid": "n1"})
        error = await ann.error()
        assert (error["error"], error["cid"]) == ("forbidden", "n1")
        for client in (ann, bob, nowhere):
            await client.close()

    run(scenario())


def test_a_direct_message_room_is_reachable_by_its_two_names_only(server: ServerProcess) -> None:
    room = "dm:ann:bob"

    async def scenario() -> None:
        ann = await user(server, "ann", room)
        bob = await user(server, "bob", room)
        await ann.until(kind("join", room=room))
        await bob.send({"type": "message", "room": room, "text": "psst"})
        await ann.message("psst")
        cy = await user(server, "cy", room)
        assert (await cy.error())["error"] == "forbidden"
        reversed_ = await user(server, "ann", "dm:bob:ann")
        assert (await reversed_.error())["error"] == "forbidden"
        # History and resume as in any room.
        again = await user(server, "ann", "lobby")
        await again.send({"type": "join", "room": room, "since": 0})
        assert (await again.message("psst"))["from"] == "bob"
        for client in (ann, bob, cy, reversed_, again):
            await client.close()

    run(scenario())


# -- typing ------------------------------------------------------------------------


def test_typing_reaches_the_room_capped_and_is_never_replayed(
    chat_server: ServerProcess,
) -> None:
    async def scenario() -> None:
        ann = await Client.open(chat_server, name="ann", room="dev")
        bob = await Client.open(chat_server, name="bob", room="dev")
        await ann.until(kind("join", room="dev"))
        for _ in range(5):
            await ann.send({"type": "typing", "room": "dev"})
        seen = await bob.until(kind("typing", room="dev"))
        assert seen == {"type": "typing", "room": "dev", "id": ann.id, "name": "ann"}
        await ann.send({"type": "message", "room": "dev", "text": "done typing"})
        await bob.message("done typing")
        assert len([e for e in bob.events if e["type"] == "typing"]) == 1  # the cap
        late = await Client.open(chat_server, name="cy", room="lobby")
        await late.send({"type": "join", "room": "dev", "since": 0})
        await late.message("done typing")
        assert not [e for e in late.events if e["type"] == "typing"]
        for client in (ann, bob, late):
            await client.close()

    run(scenario())


# -- the HTTP API ----------------------------------------------------------------


def test_every_endpoint_on_one_kept_alive_connection(server: ServerProcess) -> None:
    async def scenario() -> None:
        ann = await user(server, "ann", "dev")
        api = Api(server.port)
        body = {"room": "dev", "text": "deploy finished", "from": "ci-bot",
                "idempotency_key": "k1"}
        status, first, _ = api.call("POST", "/api/publish", body)
        assert status == 200 and first["room"] == "dev" and first["seq"] == 1
        event = await ann.message("deploy finished")
        assert (event["from"], event["from_id"], event["seq"]) == ("ci-bot", "api", 1)
        assert first["epoch"] == (await ann.seen(kind("presence", room="dev")))["epoch"]
        kept = api.conn.sock
        status, again, _ = api.call("POST", "/api/publish", body)
        assert (status, again) == (200, first)  # the same answer, nothing sent
        assert api.conn.sock is kept  # one connection for every call
        status, other, _ = api.call("POST", "/api/publish", {**body, "idempotency_key": "k2"})
        assert other["seq"] == 2
        await ann.until(kind("message", seq=2))
        assert [e["seq"] for e in ann.messages("dev")] == [1, 2]

        status, history, _ = api.call("GET", "/api/rooms/dev/history?since=1&limit=5")
        assert status == 200 and history["seq"] == 2
        assert [(m["seq"], m["text"]) for m in history["messages"]] == [(2, "deploy finished")]
        status, presence, _ = api.call("GET", "/api/rooms/dev/presence")
        assert presence == {"room": "dev", "count": 1,
                            "members": [{"id": ann.id, "name": "ann"}]}
        status, rooms, _ = api.call("GET", "/api/rooms")
        assert {"room": "dev", "members": 1} in rooms["rooms"]
        # Into a private room nobody is in: kept, and there for its members later.
        status, private, _ = api.call("POST", "/api/publish",
                                      {"room": "private:ops", "text": "paged"})
        assert status == 200 and private["seq"] == 1
        status, history, _ = api.call("GET", f"/api/rooms/{quote('private:ops')}/history")
        assert [m["from"] for m in history["messages"]] == ["api"]

        status, kicked, _ = api.call("POST", "/api/disconnect", {"name": "ann"})
        assert (status, kicked) == (200, {"name": "ann", "disconnected": 1})
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await ann.ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "kicked")
        api.close()

    run(scenario())


BAD_CALLS: list[tuple[str, str, object, str, int, str]] = [
    ("POST", "/api/publish", b"{not json", "application/json", 400, "bad_json"),
    ("POST", "/api/publish", b"[1]", "application/json", 400, "bad_json"),
    ("POST", "/api/publish", {"room": "a b", "text": "x"}, "application/json", 400,
     "bad_room"),
    ("POST", "/api/publish", {"room": "dev", "text": " "}, "application/json", 400,
     "empty_text"),
    ("POST", "/api/publish", {"room": "dev", "text": "x" * 4097}, "application/json", 400,
     "text_too_long"),
    ("POST", "/api/publish", {"room": "dev", "text": "x", "from": "a\nb"},
     "application/json", 400, "bad_name"),
    ("POST", "/api/publish", {"room": "dev", "text": "x"}, "text/plain", 415,
     "unsupported_media_type"),
    ("GET", "/api/publish", None, "", 405, "method_not_allowed"),
    ("DELETE", "/api/rooms", None, "", 405, "method_not_allowed"),
    ("GET", "/api/rooms/nowhere/history", None, "", 404, "not_found"),
    ("GET", "/api/rooms/nowhere/presence", None, "", 404, "not_found"),
    ("GET", "/api/rooms/dev/history?since=-1", None, "", 400, "bad_command"),
    ("GET", "/api/nothing", None, "", 404, "not_found"),
    ("POST", "/api/disconnect", {"name": 5}, "application/json", 400, "bad_name"),
]


@pytest.mark.parametrize("call", BAD_CALLS, ids=[f"{c[4]}-{c[5]}" for c in BAD_CALLS])
def test_bad_calls_get_their_status_and_a_json_error_and_keep_the_connection(
    server: ServerProcess, call: tuple[str, str, object, str, int, str],
) -> None:
    method, path, body, content_type, status, code = call
    api = Api(server.port)
    got, error, response = api.call(method, path, body, content_type=content_type)
    assert (got, error["error"]) == (status, code), error
    assert isinstance(error["detail"], str) and error["detail"]
    if status == 405:
        assert response.getheader("Allow")
    kept = api.conn.sock
    assert kept is not None and response.getheader("Connection") is None  # kept alive
    status, rooms, _ = api.call("GET", "/api/rooms")  # the same connection goes on
    assert status == 200 and "rooms" in rooms
    assert api.conn.sock is kept
    api.close()


def test_without_or_with_a_wrong_key_the_answer_is_401_and_the_same(
    server: ServerProcess, server_factory: ServerFactory,
) -> None:
    answers = []
    for key in (None, "wrong" * 5, KEY + "x", KEY[:-1]):
        api = Api(server.port, key)
        status, error, response = api.call("POST", "/api/publish", {"room": "dev", "text": "x"})
        assert status == 401 and response.getheader("WWW-Authenticate", "").startswith("Bearer")
        answers.append(error)
        api.close()
    assert all(a == answers[0] for a in answers), answers
    off = server_factory()  # no key configured: there is no API
    status, _, _ = Api(off.port).call("GET", "/api/rooms")
    assert status == 404


def test_an_oversized_body_gets_413_and_a_slow_one_is_cut_at_the_handshake_timeout(
    inprocess_server: InProcessFactory,
) -> None:
    served = inprocess_server(ChatApp(api_key=KEY.encode()), handshake_timeout=1.0)
    api = Api(served.port)
    status, text, response = api.call("POST", "/api/publish", b"x" * (64 * 1024 + 1))
    assert (status, text) == (413, "request body too large\n")
    assert response.getheader("Connection") == "close"  # its body was never read
    api.close()
    with RawClient(served.port, timeout=5) as client:
        client.send(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{")
        started = time.monotonic()
        ended = client.read_until_eof(timeout=5)
        assert ended == b""  # dropped, unanswered: the request never ended
        assert 0.9 < time.monotonic() - started < 4
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        head = (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\nAuthorization: Bearer " + KEY.encode()
                + b"\r\n\r\n")
        sock.sendall(head)
        try:
            for _ in range(100):  # an endless chunked body: refused past 64 KiB
                sock.sendall(b"400\r\n" + b"y" * 1024 + b"\r\n")
        except OSError:
            pass  # the server answered and closed while we were still writing
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]


def test_an_api_publish_reaches_clients_on_two_nodes_over_redis(
    server_factory: ServerFactory, redis_server: RedisServer, secrets: tuple[Path, Path],
) -> None:
    _, key = secrets
    a = server_factory("--redis", redis_server.url, "--api-key-file", str(key))
    b = server_factory("--redis", redis_server.url, "--api-key-file", str(key))

    async def scenario() -> None:
        on_a = await Client.open(a, name="ann", room="ops")
        on_b = await Client.open(b, name="bob", room="ops")
        await on_a.until(kind("presence", room="ops"))
        await on_b.until(kind("presence", room="ops"))
        api = Api(a.port)
        body = {"room": "ops", "text": "from the backend", "idempotency_key": "once"}
        status, first, _ = api.call("POST", "/api/publish", body)
        assert status == 200
        for client in (on_a, on_b):
            event = await client.message("from the backend")
            assert event["seq"] == first["seq"] and event["from_id"] == "api"
        # The retry of a publish whose answer was lost: through the other node.
        other = Api(b.port)
        status, again, _ = other.call("POST", "/api/publish", body)
        assert (status, again) == (200, first)
        await on_a.send({"type": "message", "room": "ops", "text": "after"})
        await on_b.message("after")
        assert [e["text"] for e in on_b.messages("ops")] == ["from the backend", "after"]

        # Reads span the nodes: what Redis holds, not what this node holds.
        status, history, _ = api.call("GET", "/api/rooms/ops/history?since=0")
        assert status == 200 and history["seq"] == 2 and history["first"] == 1
        assert [m["text"] for m in history["messages"]] == ["from the backend", "after"]
        status, presence, _ = api.call("GET", "/api/rooms/ops/presence")
        assert status == 200 and presence["count"] == 2
        assert sorted(m["name"] for m in presence["members"]) == ["ann", "bob"]
        status, rooms, _ = api.call("GET", "/api/rooms")
        assert rooms == {"rooms": [{"room": "ops", "members": 2}]}
        status, quiet, _ = api.call("POST", "/api/publish", {"room": "quiet", "text": "noted"})
        assert status == 200 and quiet["seq"] == 1  # a room nobody is in, on any node
        status, history, _ = other.call("GET", "/api/rooms/quiet/history")
        assert [m["text"] for m in history["messages"]] == ["noted"]
        status, _, _ = other.call("GET", "/api/rooms/nowhere/history")
        assert status == 404
        # A disconnect through A closes bob's connection on B.
        status, kicked, _ = api.call("POST", "/api/disconnect", {"name": "bob"})
        assert (status, kicked) == (200, {"name": "bob", "disconnected": 0})  # none on A
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await on_b.ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
        await on_a.send({"type": "message", "room": "ops", "text": "still here"})
        await on_a.message("still here")
        api.close()
        other.close()
        await on_a.close()

    run(scenario())

