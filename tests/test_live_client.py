"""``wsnet.client`` against the real server (``python -m wsnet`` in a
subprocess): exactly once and in order across dropped sockets and server
restarts (SIGKILL, then a restart on the same store), checked against a
``websockets`` client as an independent witness; kicked means gone; and the
terminal chat, ``python -m wsnet.client``, as a user runs it."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.chat import ChatClient as Witness
from support.chat import kind, run
from support.procs import python_env
from support.servers import ServerFactory

from wsnet.client import ChatClient, Event

pytestmark = pytest.mark.live

DEADLINE = 30.0


def pump(clients: list[ChatClient], until: float, done: object = None) -> dict[int, list[Event]]:
    """Drive every client (one thread, turns of 20 ms) until ``done()`` holds,
    or fail at ``until``."""
    got: dict[int, list[Event]] = {id(c): [] for c in clients}
    while not (callable(done) and done(got)):
        assert time.monotonic() < until, "not done before the deadline"
        for client in clients:
            event = client.next_event(0.02)
            if event is not None:
                got[id(client)].append(event)
    return got


def texts(events: list[Event], room: str) -> list[str]:
    return [e["text"] for e in events if e["type"] == "message" and e["room"] == room]


def drop_socket(client: ChatClient) -> None:
    """Cut the client's TCP connection under it, as a network would."""
    sock = socket.socket(fileno=client.fileno())
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.detach()


def test_every_message_once_and_in_order_across_drops_and_restarts(
    server_factory: ServerFactory, tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    server = server_factory("--data-dir", str(data))
    port = server.port
    url = f"ws://127.0.0.1:{port}/"
    ann = ChatClient(url, name="ann", room="dev", backoff_base=0.1, backoff_cap=0.5)
    bob = ChatClient(url, name="bob", room="dev", backoff_base=0.1, backoff_cap=0.5)
    deadline = time.monotonic() + DEADLINE
    seen: dict[int, list[Event]] = {id(ann): [], id(bob): []}

    def absorb(got: dict[int, list[Event]]) -> None:
        for key, events in got.items():
            seen[key].extend(events)

    def joined(got: dict[int, list[Event]]) -> bool:
        absorb(got)
        got.clear()
        got.update({id(ann): [], id(bob): []})
        return all(any(e["type"] == "presence" and "epoch" in e for e in seen[k]) for k in seen)

    pump([ann, bob], deadline, joined)
    sent = []
    for i in range(30):
        if i == 10:
            server.process.kill()  # SIGKILL: nothing is flushed or said
            server.terminate_and_wait()
            server = server_factory("--port", str(port), "--data-dir", str(data))
        if i == 20:
            def back(got: dict[int, list[Event]]) -> bool:
                absorb(got)
                got.clear()
                got.update({id(ann): [], id(bob): []})
                return all(c.connected and c.session.rooms["dev"].joined for c in (ann, bob))

            pump([ann, bob], deadline, back)  # both came back from the restart
            drop_socket(ann)
            drop_socket(bob)
        text = f"m{i:02}"
        ann.send(text)
        sent.append(text)
        absorb(pump([ann, bob], deadline, lambda got: True))

    def delivered(got: dict[int, list[Event]]) -> bool:
        absorb(got)
        got.clear()
        got.update({id(ann): [], id(bob): []})
        return (all(len(texts(events, "dev")) >= 30 for events in seen.values())
                and not ann.unacknowledged)

    pump([ann, bob], deadline, delivered)
    for client in (ann, bob):
        events = seen[id(client)]
        assert texts(events, "dev") == sent, client.session.name  # once each, in order
        seqs = [e["seq"] for e in events if e["type"] == "message"]
        assert seqs == sorted(set(seqs))
        assert not [e for e in events if e["type"] == "gap"]  # nothing missed, no reset
    assert ann.connections >= 3 and bob.connections >= 3  # it did reconnect, twice

    # An independent client, resuming from nothing, sees the same history.
    async def witness() -> None:
        w = await Witness.open(server, name="wit", room="lobby")
        await w.send({"type": "join", "room": "dev", "since": 0})
        last = await w.messages_until(30, "dev")
        assert [e["text"] for e in last] == sent
        await w.close()

    run(witness())
    ann.close()
    bob.close()


def test_a_kicked_client_stays_gone_and_says_so(
    server_factory: ServerFactory, tmp_path: Path,
) -> None:
    key = tmp_path / "key"
    key.write_text("k" * 32)
    server = server_factory("--api-key-file", str(key))
    client = ChatClient(server.url, name="ann", room="dev", backoff_base=0.05)
    pump([client], time.monotonic() + DEADLINE,
         lambda got: any(e["type"] == "presence" for e in got[id(client)]))
    request = (b"POST /api/disconnect HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"Authorization: Bearer " + b"k" * 32 + b"\r\nContent-Type: application/json\r\n"
               b"Content-Length: 14\r\n\r\n{\"name\":\"ann\"}")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    got = pump([client], time.monotonic() + DEADLINE,
               lambda got: any(e["type"] == "closed" for e in got[id(client)]))
    assert got[id(client)][-1] == {"type": "closed", "code": 4001, "reason": "kicked"}
    assert client.next_event(0.5) is None and not client.connected
    assert client.connections == 1


def test_the_terminal_chat_sends_typed_lines_and_prints_the_room(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()

    async def scenario() -> None:
        bob = await Witness.open(server, name="bob", room="dev")
        await bob.until(kind("presence", room="dev"))
        chat = subprocess.Popen(
            [sys.executable, "-m", "wsnet.client", server.url, "--name", "cy", "--room", "dev"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=python_env(),
        )
        try:
            assert chat.stdin is not None and chat.stdout is not None
            await bob.until(kind("join", room="dev"))
            await bob.send({"type": "message", "room": "dev", "text": "hi cy"})
            chat.stdin.write(b"hello from a terminal\n")
            chat.stdin.close()  # end of input: it sends, waits for the echo, and ends
            assert (await bob.message("hello from a terminal"))["from"] == "cy"
            out = await asyncio.wait_for(asyncio.to_thread(chat.stdout.read), 20)
            assert chat.wait(timeout=10) == 0
        finally:
            chat.kill()
            chat.wait()
        lines = out.decode().splitlines()
        assert "* connected as cy" in lines
        assert "[dev] bob: hi cy" in lines and "[dev] cy: hello from a terminal" in lines
        await bob.close()

    run(scenario(), timeout=40)
