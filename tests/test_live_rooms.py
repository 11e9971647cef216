"""Rooms, presence, history and resume over real sockets: ``python -m wsnet`` in a
subprocess, the ``websockets`` package as the client, and every command and
error path of the protocol (README, "The chat protocol")."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from support.chat import ChatClient as Client
from support.chat import kind, run, ws_connect
from support.rawclient import RawClient, http_get
from support.servers import ServerFactory, ServerProcess
from support.wire import OP_TEXT, build_frame

pytestmark = pytest.mark.live

Event = dict[str, Any]


# ----------------------------------------------------------------------------
# Every command, over the wire
# ----------------------------------------------------------------------------


def test_join_message_leave_nick_between_two_clients(chat_server: ServerProcess) -> None:
    async def scenario() -> None:
        ann = await Client.open(chat_server, name="ann", room="dev")
        first = await ann.until(kind("presence", room="dev"))
        assert first["count"] == 1 and first["members"][0]["name"] == "ann"
        bob = await Client.open(chat_server, name="bob", room="lobby")
        bob_id = (await bob.until(kind("presence", room="lobby")))["members"][0]["id"]

        await bob.send({"type": "join", "room": "dev"})
        snapshot = await bob.until(kind("presence", room="dev"))
        assert [m["name"] for m in snapshot["members"]] == ["ann", "bob"]
        assert snapshot["epoch"] == first["epoch"] and snapshot["seq"] == 0
        assert await ann.until(kind("join", room="dev")) == {
            "type": "join", "room": "dev", "id": bob_id, "name": "bob",
        }

        await ann.send({"type": "message", "room": "dev", "text": "hi bob", "cid": "a1"})
        for who in (ann, bob):
            event = await who.message("hi bob")
            assert event["seq"] == 1 and event["from"] == "ann" and event["cid"] == "a1"
        await bob.send("plain text goes to the default room")
        await bob.message("plain text goes to the default room")
        assert not ann.messages("lobby")

        await bob.send({"type": "nick", "name": "Bob B"})
        assert await bob.until(lambda e: e["type"] == "nick" and "room" not in e) == {
            "type": "nick", "id": bob_id, "name": "Bob B", "old": "bob",
        }
        renamed = await ann.until(kind("nick", room="dev"))
        assert (renamed["id"], renamed["name"], renamed["old"]) == (bob_id, "Bob B", "bob")

        await bob.send({"type": "leave", "room": "dev"})
        await bob.until(kind("leave", room="dev", id=bob_id))
        left = await ann.until(kind("leave", room="dev"))
        assert left["name"] == "Bob B"
        await ann.send({"type": "message", "room": "dev", "text": "gone?"})
        await ann.message("gone?")
        await bob.send({"type": "message", "room": "lobby", "text": "sync"})
        await bob.message("sync")  # a later tick: bob got nothing more from dev
        assert [e["text"] for e in bob.messages("dev")] == ["hi bob"]
        await ann.close()
        await bob.close()

    run(scenario())


ERRORS: list[tuple[str, Event | str, str]] = [
    ("not JSON command", '{"type": 5}', "bad_command"),
    ("unknown type", {"type": "dance"}, "unknown_type"),
    ("empty text", {"type": "message", "text": "  "}, "empty_text"),
    ("too long", {"type": "message", "text": "x" * 4097}, "text_too_long"),
    ("lone surrogate", '{"type": "message", "text": "\\udc00"}', "bad_text"),
    ("bad room name", {"type": "join", "room": "no spaces"}, "bad_room"),
    ("bad since", {"type": "join", "room": "dev", "since": "1"}, "bad_command"),
    ("bad name", {"type": "nick", "name": "<script>"}, "bad_name"),
    ("message to a room not joined", {"type": "message", "room": "dev", "text": "x"},
     "not_in_room"),
    ("leave a room not joined", {"type": "leave", "room": "dev"}, "not_in_room"),
    ("join twice", {"type": "join", "room": "lobby"}, "already_joined"),
    ("too many rooms", {"type": "join", "room": "third"}, "too_many_rooms"),
]


def test_every_error_code_is_answered_and_the_connection_stays_open(
    server_factory: ServerFactory,
) -> None:
    server = server_factory("--max-rooms-per-client", "2")

    async def scenario() -> None:
        ws = await Client.open(server, name="ann")
        await ws.send({"type": "join", "room": "second"})
        await ws.until(kind("presence", room="second"))
        for name, command, code in ERRORS:
            await ws.send(command)
            error = await ws.error()
            assert error["error"] == code, (name, error)
            assert error["detail"]
        # Still open and chatting.
        await ws.send("still here")
        await ws.message("still here")
        await ws.close()

    run(scenario())


def test_errors_name_the_room_and_cid_of_the_refused_message(chat_server: ServerProcess) -> None:
    async def scenario() -> None:
        ws = await Client.open(chat_server)
        await ws.send({"type": "message", "room": "dev", "text": "x", "cid": "c-7"})
        assert await ws.error() == {
            "type": "error", "error": "not_in_room", "detail": "join 'dev' first",
            "room": "dev", "cid": "c-7",
        }
        await ws.close()

    run(scenario())


def test_url_parameters_and_their_errors(chat_server: ServerProcess) -> None:
    async def scenario() -> None:
        ws = await ws_connect(chat_server.url + "?" + urlencode({"name": "Zoë K", "room": "café"}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert [e["type"] for e in frame] == ["welcome", "presence"]
        assert frame[0]["name"] == "Zoë K" and frame[1]["room"] == "café"
        await ws.close()
        # Bad values: still welcomed, with a guest name and no room, told why.
        query = urlencode({"name": "a\tb", "room": "x/y", "since": "soon"})
        ws = await ws_connect(chat_server.url + "?" + query)
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame[0]["type"] == "welcome" and frame[0]["name"].startswith("guest-")
        assert [e["error"] for e in frame[1:]] == ["bad_name", "bad_room", "bad_command"]
        await ws.send("hello")
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply[0]["error"] == "not_in_room"
        await ws.close()

    run(scenario())


def test_a_token_pins_the_name_against_nick_and_the_url(
    server_factory: ServerFactory, tmp_path: Path,
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s" * 32)
    token = subprocess.run(
        [sys.executable, "-m", "wsnet", "--auth-secret-file", str(secret), "--mint-token", "ann"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()
    pinned = server_factory("--auth-secret-file", str(secret))

    async def scenario() -> None:
        ws = await ws_connect(pinned.url + "?" + urlencode({"token": token, "name": "eve"}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame[0]["name"] == "ann"
        assert frame[1]["error"] == "name_pinned"
        client = Client(ws)
        await client.send({"type": "nick", "name": "eve"})
        assert (await client.error())["error"] == "name_pinned"
        await client.close()

    run(scenario())


# ----------------------------------------------------------------------------
# Batching across rooms
# ----------------------------------------------------------------------------


def test_a_member_of_two_rooms_gets_one_frame_for_both(chat_server: ServerProcess) -> None:
    async def scenario() -> None:
        both = await Client.open(chat_server, name="both", room="r1")
        await both.send({"type": "join", "room": "r2"})
        await both.until(kind("presence", room="r2"))
        # The writer is in both rooms too; its two messages go in one TCP
        # write, so the server reads them in one loop turn: one tick.
        with RawClient(chat_server.port) as writer:
            writer.handshake("/?name=writer&room=r1")
            writer.recv_data_frame()
            writer.send_text(json.dumps({"type": "join", "room": "r2"}))
            await both.until(kind("join", room="r2", name="writer"))
            writer.recv_data_frame()
            frames_before = both.frames
            pairs = (("r1", "a"), ("r2", "b"))
            commands = [{"type": "message", "room": r, "text": t} for r, t in pairs]
            writer.send(b"".join(build_frame(OP_TEXT, json.dumps(c).encode()) for c in commands))
            await both.message("b")
            got = both.events[-2:]
            assert [(e["room"], e["text"]) for e in got] == [("r1", "a"), ("r2", "b")]
            assert both.frames == frames_before + 1
        await both.close()

    run(scenario())


# ----------------------------------------------------------------------------
# History and resume, end to end
# ----------------------------------------------------------------------------


def test_a_client_that_drops_mid_conversation_resumes_complete_and_ordered(
    chat_server: ServerProcess,
) -> None:
    """The reconnect path: messages keep coming while a client is away; it comes
    back with its last seq and ends with every message once, in order."""
    total = 60

    async def scenario() -> None:
        talker = await Client.open(chat_server, name="talker", room="talk")
        reader = await Client.open(chat_server, name="reader", room="talk")
        epoch = (await reader.until(kind("presence", room="talk")))["epoch"]

        async def talk() -> None:
            for i in range(1, total + 1):
                await talker.send(f"m{i}")
                await asyncio.sleep(0.01)  # pacing, not synchronisation

        talking = asyncio.create_task(talk())
        await reader.message("m10")
        last = reader.messages("talk")[-1]["seq"]
        # Vanish without a close frame, as a lost network does.
        reader.ws.transport.abort()
        await reader.ws.wait_closed()
        await talker.message("m30")  # the conversation goes on meanwhile
        back = await Client.open(
            chat_server, name="reader", room="talk", since=last, epoch=epoch,
        )
        await talking
        await back.message(f"m{total}")
        got = reader.messages("talk") + back.messages("talk")
        assert [e["seq"] for e in got] == list(range(1, total + 1))
        assert [e["text"] for e in got] == [f"m{i}" for i in range(1, total + 1)]
        assert not any(e["type"] == "gap" for e in back.events)
        await talker.close()
        await back.close()

    run(scenario(), timeout=30)


def test_resume_by_join_command_and_a_gap_older_than_history(
    server_factory: ServerFactory,
) -> None:
    server = server_factory("--history", "5")

    async def scenario() -> None:
        ann = await Client.open(server, name="ann", room="dev")
        bob = await Client.open(server, name="bob", room="dev")
        epoch = (await bob.until(kind("presence", room="dev")))["epoch"]
        await ann.send("one")
        await bob.message("one")
        await bob.send({"type": "leave", "room": "dev"})
        await bob.until(kind("leave", room="dev", name="bob"))
        for i in range(2, 4):
            await ann.send(f"m{i}")
        await ann.message("m3")
        # Back within history: exactly 2 and 3.
        await bob.send({"type": "join", "room": "dev", "since": 1, "epoch": epoch})
        await bob.message("m3")
        assert [e["seq"] for e in bob.messages("dev")] == [1, 2, 3]
        await bob.send({"type": "leave", "room": "dev"})
        await bob.until(kind("leave", room="dev", name="bob"))
        for i in range(4, 13):
            await ann.send(f"m{i}")
        await ann.message("m12")
        # Away for 9 messages with a history of 5: told where history starts.
        await bob.send({"type": "join", "room": "dev", "since": 3, "epoch": epoch})
        gap = await bob.until(kind("gap"))
        assert gap == {"type": "gap", "room": "dev", "since": 3, "first": 8}
        await bob.message("m12")
        assert [e["seq"] for e in bob.messages("dev")] == [1, 2, 3, 8, 9, 10, 11, 12]
        await ann.close()
        await bob.close()

    run(scenario())


def test_after_a_server_restart_an_old_since_is_a_reset(server_factory: ServerFactory) -> None:
    first = server_factory()

    async def before() -> tuple[int, str]:
        ws = await Client.open(first, room="dev")
        epoch = (await ws.until(kind("presence", room="dev")))["epoch"]
        for i in range(3):
            await ws.send(f"m{i}")
        await ws.message("m2")
        await ws.close()
        return 3, epoch

    last, epoch = run(before())
    first.terminate_and_wait()
    second = server_factory()

    async def after() -> None:
        ws = await Client.open(second, room="dev")
        await ws.send("new 1")
        await ws.message("new 1")
        back = await Client.open(second, room="dev", since=last, epoch=epoch)
        presence = await back.until(kind("presence", room="dev"))
        assert presence["epoch"] != epoch
        gap = await back.until(kind("gap"))
        assert gap == {"type": "gap", "room": "dev", "since": 3, "first": 1, "reset": True}
        replay = await back.until(kind("message"))
        assert (replay["seq"], replay["text"]) == (1, "new 1")
        await ws.close()
        await back.close()

    run(after())


# ----------------------------------------------------------------------------
# Presence in large rooms, and rooms are freed
# ----------------------------------------------------------------------------


def test_presence_becomes_a_count_above_the_limit(server_factory: ServerFactory) -> None:
    server = server_factory("--presence-limit", "3")

    async def scenario() -> None:
        clients = [await Client.open(server, name=f"p{i}") for i in range(3)]
        fourth = await Client.open(server, name="p3")
        snapshot = await fourth.until(kind("presence", room="lobby"))
        assert snapshot["count"] == 4 and "members" not in snapshot
        count = await clients[0].until(lambda e: e["type"] == "presence" and e["count"] == 4)
        assert "members" not in count
        await fourth.close()
        # Back to the limit: the member list returns (within a second).
        back = await clients[0].until(lambda e: e["type"] == "presence" and e["count"] == 3)
        assert [m["name"] for m in back["members"]] == ["p0", "p1", "p2"]
        for c in clients:
            await c.close()

    run(scenario())


def test_many_joins_and_leaves_leave_no_rooms_behind(server_factory: ServerFactory) -> None:
    chat_server = server_factory("--rate-limit", "0")

    async def scenario() -> None:
        ws = await Client.open(chat_server, name="walker")
        for i in range(300):
            await ws.send({"type": "join", "room": f"r{i}"})
            await ws.send({"type": "leave", "room": f"r{i}"})
        await ws.until(kind("leave", room="r299"))
        stats = json.loads(http_get(chat_server.port, "/healthz").body)
        assert (stats["rooms"], stats["idle_rooms"]) == (1, 0)  # the lobby
        await ws.close()

    run(scenario())
    deadline = time.monotonic() + 5
    while True:
        stats = json.loads(http_get(chat_server.port, "/healthz").body)
        if stats["rooms"] == 0 or time.monotonic() > deadline:
            break
    assert (stats["rooms"], stats["idle_rooms"]) == (0, 0)


# ----------------------------------------------------------------------------
# The web page
# ----------------------------------------------------------------------------


def _csp_hash(body: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"


@pytest.mark.parametrize("path", ["/", "/index.html", "/?room=dev"])
def test_get_root_serves_the_page_with_a_policy_allowing_only_its_own_code(
    chat_server: ServerProcess, path: str,
) -> None:
    response = http_get(chat_server.port, path)
    assert response.status == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.body.decode()
    assert page.lower().startswith("<!doctype html>")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    scripts = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", page, re.DOTALL)
    assert scripts and styles
    assert all(_csp_hash(s) in policy for s in scripts)
    assert all(_csp_hash(s) in policy for s in styles)
    # No external requests: no URLs to other hosts anywhere in the page.
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", page)
    assert response.headers["x-content-type-options"] == "nosniff"


def test_head_root_has_the_headers_only_and_ws_path_stays_426(chat_server: ServerProcess) -> None:
    with RawClient(chat_server.port) as client:
        client.send(b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = client.read_until_eof(5)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == b""
    length = re.search(rb"(?i)content-length: (\d+)", head)
    assert length is not None and int(length[1]) > 1000
    assert http_get(chat_server.port, "/ws").status == 426
