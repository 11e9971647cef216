"""The Redis backplane, live: two ``python -m wsnet --redis`` nodes on one real
``redis-server`` (the ``redis_server`` fixture), the ``websockets`` package as
the client.

What is held: one ``seq`` order for a room on every node, resume on another
node, presence across nodes (also when both open a room at once), a killed
node's members leaving after the node TTL (and a stalled one's coming back),
Redis killed, stopped, or only one node's subscription cut (and what each
client gets after, and what the node logs), ``/healthz``, and history capped
in Redis.

Every wait has a deadline: events are awaited with timeouts and node states
are polled on ``/healthz``. Redis itself is read over a raw socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import hiredis
import pytest
from support.chat import ChatClient, kind, run
from support.procs import RedisServer
from support.rawclient import http_get
from support.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.live

Event = dict[str, Any]

#: The longest any single step may take (a node reconnecting to Redis backs off
#: up to 5 s per attempt; everything else is a few ticks).
DEADLINE = 10.0
#: ``--node-ttl`` for the killed-node test: short, so the test is too.
NODE_TTL = 2.0
ROOM = "deck"


# ----------------------------------------------------------------------------
# Redis over a raw socket
# ----------------------------------------------------------------------------


def _resp(*args: str | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def redis_call(port: int, *args: str | int, timeout: float = 5.0) -> Any:
    """One command on a fresh connection; the reply as hiredis builds it."""
    reader = hiredis.Reader()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(_resp(*args))
        while True:
            reply = reader.gets()
            if reply is not False:
                assert not isinstance(reply, hiredis.ReplyError), (args, reply)
                return reply
            data = sock.recv(65536)
            assert data, f"redis closed the connection during {args!r}"
            reader.feed(data)


def redis_clients(port: int) -> list[dict[str, str]]:
    """CLIENT LIST as one dict per connection (without the asking one)."""
    text = redis_call(port, "CLIENT", "LIST").decode()
    clients = []
    for line in text.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if not fields.get("cmd", "").startswith("client"):
            clients.append(fields)
    return clients


# ----------------------------------------------------------------------------
# Nodes
# ----------------------------------------------------------------------------


@dataclass
class Node:
    server: ServerProcess
    id: str  # the backplane's node name, as /healthz reports it

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def health(self) -> dict[str, Any]:
        response = http_get(self.server.port, "/healthz")
        assert response.status == 200, response
        body = json.loads(response.body)
        assert isinstance(body, dict)
        return body

    def log(self) -> str:
        return self.server.stderr_text()

    def log_count(self, needle: str) -> int:
        return sum(needle in line for line in self.log().splitlines())


def wait_redis_state(node: Node, state: str, timeout: float = DEADLINE) -> float:
    """Poll /healthz until ``redis_state`` is ``state``; the seconds it took."""
    start = time.monotonic()
    last: dict[str, Any] = {}
    while time.monotonic() - start < timeout:
        last = node.health()
        if last["redis_state"] == state:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"node {node.id} not {state} within {timeout} s: {last}")


def start_node(server_factory: ServerFactory, redis: RedisServer, *args: str) -> Node:
    """A chat node on ``redis``, once its backplane is up."""
    server = server_factory("--redis", redis.url, *args)
    first = json.loads(http_get(server.port, "/healthz").body)
    node = Node(server, first["node"])
    wait_redis_state(node, "up")
    return node


def two_nodes(server_factory: ServerFactory, redis: RedisServer, *args: str) -> tuple[Node, Node]:
    a = start_node(server_factory, redis, *args)
    b = start_node(server_factory, redis, *args)
    assert a.id != b.id
    return a, b


@contextlib.contextmanager
def paused(node: Node) -> Iterator[None]:
    """SIGSTOP the node for the block (SIGCONT however the block ends)."""
    os.kill(node.server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(node.server.pid, signal.SIGCONT)


def assert_clean_log(node: Node, outages: int) -> None:
    """No traceback, and one backplane line per state change: the first "up",
    then a "down" and an "up" per outage, and nothing else."""
    text = node.log()
    assert "Traceback" not in text, text
    lines = [line.split("redis backplane: ", 1)[1] for line in text.splitlines()
             if "redis backplane: " in line]
    expected = ["up"] + ["down", "up"] * outages
    assert [line.split()[0] for line in lines] == expected, f"backplane lines: {lines}\n{text}"


# ----------------------------------------------------------------------------
# Clients
# ----------------------------------------------------------------------------


class Client(ChatClient):
    """The shared chat client, on a node, with ``ROOM`` as the default room."""

    timeout = DEADLINE
    #: Every client opened by the running scenario, dropped when it ends
    #: (see ``scenario``), so that a failed test does not leave nodes waiting.
    every: ClassVar[list[Client]] = []

    def opened(self) -> None:
        Client.every.append(self)

    @classmethod
    async def enter(cls, node: Node, room: str = ROOM, **query: object) -> Client:
        """Open with ``room`` as the default room and wait for the join answer,
        so that clients entered one after the other join one after the other."""
        client = await cls.open(node, room=room, **query)
        await client.until(kind("presence", room=room))
        return client

    async def say(self, text: str, cid: str | None = None, room: str = ROOM) -> None:
        command: Event = {"type": "message", "room": room, "text": text}
        if cid is not None:
            command["cid"] = cid
        await self.send(command)

    def messages(self, room: str = ROOM) -> list[Event]:
        return super().messages(room)

    async def messages_until(self, seq: int, room: str = ROOM,
                             timeout: float | None = None) -> list[Event]:
        return await super().messages_until(seq, room, timeout)

    def view(self, room: str = ROOM) -> dict[str, str]:
        return super().view(room)

    async def wait_view(self, expected: dict[str, str], room: str = ROOM,
                        timeout: float | None = None) -> None:
        await super().wait_view(expected, room, timeout)


def scenario(coro: Coroutine[Any, Any, None], timeout: float = 20.0) -> None:
    """Run one async scenario, bounded, then drop whatever clients it left open."""

    async def bounded() -> None:
        try:
            await coro
        finally:
            for client in Client.every:
                client.abort()
            Client.every.clear()

    run(bounded(), timeout)


def members_of(*clients: Client) -> dict[str, str]:
    return {c.id: c.name for c in clients}


def summary(messages: list[Event]) -> list[tuple[int, str, str]]:
    return [(m["seq"], m["from_id"], m["text"]) for m in messages]


def presence_slips(events: list[Event], room: str = ROOM) -> list[Event]:
    """Events that contradict the member list the events before them built:
    a ``join`` of someone present, a ``leave`` of someone absent."""
    present: set[str] = set()
    slips = []
    for event in events:
        if event.get("room") != room:
            continue
        if event["type"] == "presence" and "members" in event:
            present = {m["id"] for m in event["members"]}
        elif event["type"] == "join":
            if event["id"] in present:
                slips.append(event)
            present.add(event["id"])
        elif event["type"] == "leave":
            if event["id"] not in present:
                slips.append(event)
            present.discard(event["id"])
    return slips


async def joined(clients: list[Client], room: str = ROOM) -> str:
    """Every client got its join answer and sees all the others; the epoch."""
    epochs = set()
    for client in clients:
        epochs.add((await client.seen(kind("presence", room=room)))["epoch"])
    everyone = members_of(*clients)
    for client in clients:
        await client.wait_view(everyone, room)
    assert len(epochs) == 1, epochs
    return str(epochs.pop())


# ----------------------------------------------------------------------------
# 1. One order everywhere
# ----------------------------------------------------------------------------


def test_clients_on_both_nodes_get_every_message_once_in_one_seq_order(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    a, b = two_nodes(server_factory, redis_server)
    per_sender = 12

    async def main() -> None:
        clients = [await Client.enter(node, name=f"u{i}")
                   for i, node in enumerate((a, b, a, b))]
        await joined(clients)
        sent: dict[str, list[str]] = {c.id: [] for c in clients}
        for k in range(per_sender):  # round robin: the two nodes publish at once
            for client in clients:
                text = f"{client.name}-{k}"
                sent[client.id].append(text)
                await client.say(text, cid=f"c{k}")
        total = per_sender * len(clients)
        for client in clients:
            await client.messages_until(total)
        # A last message: whatever came before it came exactly once, or shows here.
        await clients[1].say("end")
        orders = [summary(await c.messages_until(total + 1)) for c in clients]
        first = orders[0]
        assert [seq for seq, _, _ in first] == list(range(1, total + 2))
        assert first[-1][2] == "end"
        for order in orders[1:]:
            assert order == first
        for sender, texts in sent.items():  # each sender's own order is kept
            assert [t for _, who, t in first if who == sender and t != "end"] == texts
        for client in clients:
            await client.close()

    scenario(main())


# ----------------------------------------------------------------------------
# 2. Resume on the other node
# ----------------------------------------------------------------------------


def test_resume_on_the_other_node_gets_exactly_the_missed_messages(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    a, b = two_nodes(server_factory, redis_server)

    async def main() -> None:
        ann = await Client.enter(a, name="ann")
        bob = await Client.enter(b, name="bob")
        epoch = await joined([ann, bob])
        for k in range(3):
            await bob.say(f"before-{k}")
        seen = await ann.messages_until(3)
        assert [m["seq"] for m in seen] == [1, 2, 3]
        since = seen[-1]["seq"]

        ann.abort()
        await bob.until(kind("leave", room=ROOM, id=ann.id))  # node A noticed
        for k in range(5):
            await bob.say(f"missed-{k}")
        await bob.messages_until(8)

        # Back, on node B, with since and epoch: presence, then exactly 4..8.
        again = await Client.enter(b, name="ann", since=since, epoch=epoch)
        await again.messages_until(8)
        assert [e["type"] for e in again.events] == ["welcome", "presence"] + ["message"] * 5
        presence = again.events[1]
        assert (presence["epoch"], presence["seq"]) == (epoch, 8)
        assert [(m["seq"], m["text"]) for m in again.messages()] == [
            (4 + k, f"missed-{k}") for k in range(5)
        ]
        await bob.say("live")
        live = await again.messages_until(9)
        assert [m["seq"] for m in live] == list(range(4, 10))
        assert not [e for e in again.events if e["type"] == "gap"]

        # Node A no longer holds the room (nobody there): a join with since
        # loads it from Redis and replays the same way.
        cy = await Client.open(a, name="cy")
        await cy.send({"type": "join", "room": ROOM, "since": since, "epoch": epoch})
        await cy.messages_until(9)
        mine = [e for e in cy.events if e.get("room") == ROOM]
        assert [e["type"] for e in mine] == ["presence"] + ["message"] * 6, mine
        assert (mine[0]["epoch"], mine[0]["seq"]) == (epoch, 9)
        assert [m["seq"] for m in cy.messages()] == list(range(4, 10))
        for client in (bob, again, cy):
            await client.close()

    scenario(main())


def test_a_resend_by_cid_on_either_node_or_after_a_node_restart_is_one_message(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    a, b = two_nodes(server_factory, redis_server)

    async def main() -> None:
        nonlocal a
        ann = await Client.enter(a, name="ann")
        bob = await Client.enter(b, name="bob")
        epoch = await joined([ann, bob])
        await ann.say("hello", cid="r1")
        [first] = await bob.messages_until(1)
        await ann.say("hello", cid="r1")  # resent on the same node
        assert await ann.until(kind("message", seq=1)) == first
        ann.abort()
        again = await Client.enter(b, name="ann", since=1, epoch=epoch)  # the other node
        await again.say("hello", cid="r1")
        assert (await again.until(kind("message", cid="r1"))) == first
        await again.close()
        a.server.terminate_and_wait()  # a node restarts: Redis still knows the cid
        a = start_node(server_factory, redis_server)
        back = await Client.enter(a, name="ann", since=1, epoch=epoch)
        await back.say("hello", cid="r1")
        assert (await back.until(kind("message", cid="r1"))) == first
        await back.say("next", cid="r2")
        await bob.messages_until(2)
        # bob saw the message once, and the resends took no seq.
        assert [(m["seq"], m["text"]) for m in bob.messages()] == [(1, "hello"), (2, "next")]
        await back.close()
        await bob.close()

    scenario(main())


def test_a_resume_on_a_node_still_catching_up_repeats_nothing_and_resets_nothing(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    """Redis restarts (keeping its data); node B, stopped meanwhile, comes back
    behind node A. A client that saw seq 8 through A resumes on B before B has
    caught up: it must get the messages after 8 once, and no reset."""
    a, b = two_nodes(server_factory, redis_server)

    async def main() -> None:
        ann = await Client.enter(a, name="ann")
        bob = await Client.enter(b, name="bob")
        epoch = await joined([ann, bob])
        for k in range(3):
            await ann.say(f"before-{k}")
        await bob.messages_until(3)
        with paused(b):
            # Redis restarts with its data (SAVE, then the dump is loaded): B's
            # link is cut while it is stopped, and A reconnects.
            redis_call(redis_server.port, "SAVE")
            redis_server.kill()
            redis_server.start()
            wait_redis_state(a, "up")
            for k in range(5):  # published while B is away
                await ann.say(f"while-{k}")
            assert [m["seq"] for m in await ann.messages_until(8)] == list(range(1, 9))
            redis_call(redis_server.port, "SAVE")
            redis_server.kill()  # B cannot catch up until Redis is back
        wait_redis_state(b, "down")  # B is back, behind (seq 3), and cut off
        cy = await Client.open(b, name="cy", room=ROOM, since=8, epoch=epoch)
        redis_server.start()
        wait_redis_state(b, "up")
        wait_redis_state(a, "up")
        presence = await cy.until(kind("presence", room=ROOM), timeout=15)
        assert (presence["epoch"], presence["seq"]) == (epoch, 8)
        await ann.say("live")
        await cy.messages_until(9)
        assert [e["type"] for e in cy.events] == ["welcome", "presence", "message"]
        await bob.messages_until(9)
        assert [m["seq"] for m in bob.messages()] == list(range(1, 10))  # each once
        assert not [e for e in bob.events if e["type"] == "gap"]
        for client in (ann, bob, cy):
            await client.close()

    scenario(main(), timeout=40)


# ----------------------------------------------------------------------------
# 3. Presence across nodes
# ----------------------------------------------------------------------------


def test_presence_spans_nodes_with_ids_unique_per_node(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    a, b = two_nodes(server_factory, redis_server)

    async def main() -> None:
        ann = await Client.enter(a, name="ann")
        first = await ann.seen(kind("presence", room=ROOM))
        assert first["members"] == [{"id": ann.id, "name": "ann"}]
        bob = await Client.enter(b, name="bob")
        # Connection ids start over on each node: the node prefix keeps them apart.
        assert ann.id.startswith(a.id + "-") and bob.id.startswith(b.id + "-")
        assert ann.id != bob.id
        reply = await bob.seen(kind("presence", room=ROOM))
        assert members_of(ann, bob) == {m["id"]: m["name"] for m in reply["members"]}
        assert reply["count"] == 2 and reply["epoch"] == first["epoch"]
        assert await ann.until(kind("join", room=ROOM)) == {
            "type": "join", "room": ROOM, "id": bob.id, "name": "bob",
        }

        cy = await Client.enter(a, name="cy")  # a second one on node A
        reply = await cy.seen(kind("presence", room=ROOM))
        assert {m["id"]: m["name"] for m in reply["members"]} == members_of(ann, bob, cy)
        for other in (ann, bob):
            assert await other.until(kind("join", room=ROOM)) == {
                "type": "join", "room": ROOM, "id": cy.id, "name": "cy",
            }

        await bob.send({"type": "nick", "name": "bobby"})
        assert await bob.until(kind("nick")) == {
            "type": "nick", "id": bob.id, "name": "bobby", "old": "bob",
        }
        for other in (ann, cy):
            assert await other.until(kind("nick", room=ROOM)) == {
                "type": "nick", "room": ROOM, "id": bob.id, "name": "bobby", "old": "bob",
            }

        await cy.send({"type": "leave", "room": ROOM})
        for other in (ann, bob):
            assert await other.until(kind("leave", room=ROOM)) == {
                "type": "leave", "room": ROOM, "id": cy.id, "name": "cy",
            }
        await bob.close()
        assert await ann.until(kind("leave", room=ROOM)) == {
            "type": "leave", "room": ROOM, "id": bob.id, "name": "bobby",
        }

        # Everyone's view, and a newcomer's on node B, is what is left.
        dan = await Client.enter(b, name="dan")
        reply = await dan.seen(kind("presence", room=ROOM))
        assert {m["id"]: m["name"] for m in reply["members"]} == members_of(ann, dan)
        await ann.wait_view(members_of(ann, dan))
        # Nobody heard of a person twice, or of a leave of someone not there.
        for client in (ann, bob, cy, dan):
            assert presence_slips(client.events) == [], client.events
        for client in (ann, cy, dan):
            await client.close()

    scenario(main())


def test_presence_converges_when_both_nodes_open_a_room_at_once(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    """Both nodes load a room for the first time while the other's members
    join it. A join announced while a node is still loading the room is either
    in what it loads or heard after: either way every client ends up seeing
    every member (a few rounds, as the timing varies)."""
    a, b = two_nodes(server_factory, redis_server)

    async def main() -> None:
        for n in range(8):
            room = f"race{n}"
            clients = await asyncio.gather(*(
                Client.open(node, room=room, name=f"p{i}")
                for i, node in enumerate((a, b) * 3)
            ))
            everyone = members_of(*clients)
            for client in clients:  # nobody missed
                await client.wait_view(everyone, room, timeout=3)
            for client in clients:  # nobody heard twice
                assert presence_slips(client.events, room) == [], client.events
            for client in clients:
                client.abort()

    scenario(main())


# ----------------------------------------------------------------------------
# 4. A killed node
# ----------------------------------------------------------------------------


def test_members_of_a_killed_node_leave_within_the_node_ttl(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    a, b = two_nodes(server_factory, redis_server, "--node-ttl", str(NODE_TTL))

    async def main() -> None:
        ann = await Client.enter(a, name="ann")
        bob = await Client.enter(b, name="bob")
        cy = await Client.enter(b, name="cy")
        await joined([ann, bob, cy])

        b.server.process.kill()  # SIGKILL: no goodbye to Redis
        b.server.process.wait(5)
        killed = time.monotonic()
        # Its last heartbeat is at most TTL/3 old, and the reaper runs every TTL/3.
        await ann.wait_view(members_of(ann), timeout=NODE_TTL * 2 + 1)
        elapsed = time.monotonic() - killed
        assert elapsed <= NODE_TTL + NODE_TTL / 3 + 0.5, elapsed
        leaves = [e for e in ann.events if e["type"] == "leave"]
        assert sorted((e["id"], e["name"]) for e in leaves) == sorted(
            [(bob.id, "bob"), (cy.id, "cy")],
        )
        assert all(e["room"] == ROOM for e in leaves)

        # Redis forgot the node and its members: a newcomer sees only ann.
        dan = await Client.enter(a, name="dan")
        reply = await dan.seen(kind("presence", room=ROOM))
        assert {m["id"] for m in reply["members"]} == {ann.id, dan.id}
        nodes = redis_call(redis_server.port, "ZRANGE", "wsnet:nodes", 0, -1)
        assert b.id.encode() not in nodes and a.id.encode() in nodes
        await dan.say("still chatting")
        await ann.until(kind("message", text="still chatting"))
        await ann.close()
        await dan.close()

    scenario(main())
    assert_clean_log(a, outages=0)


def test_a_node_stalled_past_the_ttl_registers_its_members_again(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    """A node silent for longer than --node-ttl (a long pause, a frozen VM) has
    its members removed by the others. When it runs again its clients are still
    connected and can still chat, so they must be in the room again for the
    others, not speakers nobody sees in the room."""
    a, b = two_nodes(server_factory, redis_server, "--node-ttl", str(NODE_TTL))

    async def main() -> None:
        ann = await Client.enter(a, name="ann")
        bob = await Client.enter(b, name="bob")
        await joined([ann, bob])
        with paused(b):
            await ann.until(kind("leave", room=ROOM, id=bob.id), timeout=NODE_TTL * 2 + 1)
        await bob.say("still here")
        await ann.until(kind("message", text="still here"))
        await ann.wait_view(members_of(ann, bob), timeout=NODE_TTL * 2)
        cy = await Client.enter(a, name="cy")
        reply = await cy.seen(kind("presence", room=ROOM))
        assert {m["id"] for m in reply["members"]} == {ann.id, bob.id, cy.id}, reply

    scenario(main())


# ----------------------------------------------------------------------------
# 5, 6. Redis goes away and comes back
# ----------------------------------------------------------------------------


async def refused_while_down(clients: list[Client]) -> None:
    """Each message sent during the outage is answered ``unavailable`` with
    its cid; so is a join of a room the node does not hold."""
    for n, client in enumerate(clients):
        await client.say("into the void", cid=f"down-{n}")
        error = await client.until(kind("error"))
        assert error["error"] == "unavailable" and error["cid"] == f"down-{n}", error
        assert error["room"] == ROOM, error
        await client.send({"type": "join", "room": "elsewhere"})
        error = await client.until(kind("error"))
        assert (error["error"], error["room"]) == ("unavailable", "elsewhere"), error


def new_epoch_presence(old_epoch: str) -> Callable[[Event], bool]:
    return lambda e: (e["type"] == "presence" and e.get("room") == ROOM
                      and e.get("epoch") not in (None, old_epoch))


async def reset_of(client: Client, old_epoch: str) -> tuple[Event, Event, int]:
    """The reset gap and the new epoch's presence (in either order) a client got
    when its node found the room lost, and where the first of them is."""
    gap = await client.seen(kind("gap", room=ROOM))
    presence = await client.seen(new_epoch_presence(old_epoch))
    return gap, presence, min(client.events.index(gap), client.events.index(presence))


async def reset_then_chat(clients: list[Client], old_epoch: str, old_seq: int) -> None:
    """After Redis lost the room: a reset gap and a new presence for everyone,
    then chat goes on across nodes from seq 1, every message once everywhere."""
    epochs = set()
    for client in clients:
        gap, presence, _ = await reset_of(client, old_epoch)
        assert gap == {"type": "gap", "room": ROOM, "since": old_seq, "first": 1,
                       "reset": True}, gap
        assert presence["seq"] == 0, presence
        epochs.add(presence["epoch"])
    assert len(epochs) == 1, epochs
    everyone = members_of(*clients)
    for client in clients:
        await client.wait_view(everyone)
    for n, client in enumerate(clients):
        await client.say(f"after-{n}")
        await client.seen(kind("message", text=f"after-{n}"))
    last = f"after-{len(clients) - 1}"
    for client in clients:
        await client.seen(kind("message", text=last))
        _, _, start = await reset_of(client, old_epoch)
        after = client.events[start:]
        assert [(m["seq"], m["text"]) for m in after if m["type"] == "message"] == [
            (n + 1, f"after-{n}") for n in range(len(clients))
        ], after
        assert not [m for m in client.messages() if m.get("cid", "").startswith("down-")]


def test_redis_killed_mid_chat_refuses_then_resets_and_chat_goes_on(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    a, b = two_nodes(server_factory, redis_server)

    async def main() -> None:
        ann = await Client.enter(a, name="ann")
        bob = await Client.enter(b, name="bob")
        epoch = await joined([ann, bob])
        await ann.say("one")
        await bob.say("two")
        for client in (ann, bob):
            await client.messages_until(2)

        redis_server.kill()
        await asyncio.to_thread(wait_redis_state, a, "down")
        await asyncio.to_thread(wait_redis_state, b, "down")
        await refused_while_down([ann, bob])
        redis_server.start()
        await asyncio.to_thread(wait_redis_state, a, "up")
        await asyncio.to_thread(wait_redis_state, b, "up")
        await reset_then_chat([ann, bob], epoch, 2)
        for client in (ann, bob):
            await client.close()

    scenario(main(), timeout=40)
    for node in (a, b):
        assert_clean_log(node, outages=1)
        # One warning per link and outage, however many reconnection attempts.
        assert node.log_count("redis commands: ") == 3, node.log()  # up, down, up
        assert node.log_count("redis subscriber: ") == 3, node.log()


def test_redis_stopped_for_seconds_then_started_recovers_the_same_way(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    a, b = two_nodes(server_factory, redis_server)

    async def main() -> None:
        ann = await Client.enter(a, name="ann")
        bob = await Client.enter(b, name="bob")
        epoch = await joined([ann, bob])
        await bob.say("one")
        await ann.messages_until(1)

        redis_server.stop()  # SIGTERM; without persistence the data is gone
        await asyncio.to_thread(wait_redis_state, a, "down")
        await asyncio.to_thread(wait_redis_state, b, "down")
        await refused_while_down([ann, bob])
        down_until = time.monotonic() + 2.0
        while time.monotonic() < down_until:  # a few seconds down, and down they stay
            for node in (a, b):
                assert (await asyncio.to_thread(node.health))["redis_state"] == "down"
            await asyncio.sleep(0.2)
        redis_server.start()
        await asyncio.to_thread(wait_redis_state, a, "up")
        await asyncio.to_thread(wait_redis_state, b, "up")
        await reset_then_chat([ann, bob], epoch, 1)
        for client in (ann, bob):
            await client.close()

    scenario(main(), timeout=40)
    for node in (a, b):
        assert_clean_log(node, outages=1)


def test_a_node_that_reloads_late_replays_what_the_new_epoch_already_has(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    """Nodes reconnect on their own (random backoff): after Redis lost
    everything, one may chat in the new epoch before the other reloads. The
    late node's clients must still get those messages (after their reset gap),
    not a presence whose seq silently passes them."""
    a, b = two_nodes(server_factory, redis_server)

    async def main() -> None:
        ann = await Client.enter(a, name="ann")
        bob = await Client.enter(b, name="bob")
        epoch = await joined([ann, bob])
        await ann.say("one")
        await bob.messages_until(1)

        redis_server.kill()
        await asyncio.to_thread(wait_redis_state, a, "down")
        await asyncio.to_thread(wait_redis_state, b, "down")
        with paused(b):  # node B comes back only after ann spoke
            redis_server.start()
            await asyncio.to_thread(wait_redis_state, a, "up")
            await reset_of(ann, epoch)
            await ann.say("early")
            await ann.until(kind("message", text="early", seq=1))
        await asyncio.to_thread(wait_redis_state, b, "up")
        gap, presence, start = await reset_of(bob, epoch)
        assert gap.get("reset") is True and gap["since"] == 1, gap
        assert presence["seq"] == 1, presence  # "early" is the new epoch's first
        await bob.say("late")
        await ann.until(kind("message", text="late"))
        await bob.until(kind("message", text="late"))
        after = bob.events[start:]
        assert summary([e for e in after if e["type"] == "message"]) == [
            (1, ann.id, "early"), (2, bob.id, "late"),
        ], after
        for client in (ann, bob):
            await client.close()

    scenario(main(), timeout=40)


def subscriber_id(port: int, own_connections: set[str]) -> str:
    """The one connection among ``own_connections`` that is subscribed."""
    subscribed = [c["id"] for c in redis_clients(port)
                  if c["id"] in own_connections and int(c.get("sub", "0")) > 0]
    assert len(subscribed) == 1, redis_clients(port)
    return subscribed[0]


def cut_subscription_while_others_chat(
    redis_server: RedisServer, server_factory: ServerFactory, missed: int, *args: str,
) -> tuple[Node, Node, list[Event], list[Event]]:
    """Node A's subscriber link is killed (A paused, so nothing it would read
    can reach it) while bob on node B sends ``missed`` messages; then A goes on.
    ann's (on A) and bob's events in the room, once bob's last one reached ann."""
    a = start_node(server_factory, redis_server, *args)
    own = {c["id"] for c in redis_clients(redis_server.port)}  # node A's two links
    assert len(own) == 2, own
    b = start_node(server_factory, redis_server, *args)
    channel = f"wsnet:r:{ROOM}"
    result: list[list[Event]] = []

    async def main() -> None:
        ann = await Client.enter(a, name="ann")
        bob = await Client.enter(b, name="bob")
        await joined([ann, bob])
        for k in range(2):
            await bob.say(f"before-{k}")
        await ann.messages_until(2)
        with paused(a):
            killed = redis_call(redis_server.port, "CLIENT", "KILL", "ID",
                                subscriber_id(redis_server.port, own))
            assert killed == 1
            assert redis_call(redis_server.port, "PUBSUB", "NUMSUB", channel)[1] == 1
            for k in range(missed):
                await bob.say(f"missed-{k}")
            await bob.messages_until(2 + missed)
        await ann.messages_until(2 + missed)
        await bob.say("after")
        await ann.messages_until(3 + missed)
        await ann.say("from ann")
        await bob.messages_until(4 + missed)
        await ann.messages_until(4 + missed)
        result.extend([[e for e in c.events if e.get("room") == ROOM] for c in (ann, bob)])
        for client in (ann, bob):
            await client.close()

    scenario(main(), timeout=30)
    assert_clean_log(a, outages=1)
    assert a.log_count("redis subscriber: ") == 3, a.log()  # up, down, up
    assert a.log_count("redis commands: ") == 1, a.log()  # never dropped
    assert_clean_log(b, outages=0)
    return a, b, result[0], result[1]


def test_a_node_whose_subscription_was_cut_delivers_what_it_missed_in_order(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    missed = 6
    _a, _b, ann, bob = cut_subscription_while_others_chat(redis_server, server_factory, missed)
    texts = ["before-0", "before-1", *(f"missed-{k}" for k in range(missed)), "after",
             "from ann"]
    expected = list(enumerate(texts, start=1))
    for events in (ann, bob):
        assert [(m["seq"], m["text"]) for m in events if m["type"] == "message"] == expected
        assert not [e for e in events if e["type"] == "gap"], events


def test_a_node_that_missed_more_than_history_says_gap(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    """Missed more than --history while its subscription was down: what Redis
    still has is delivered, and the hole before it is announced with a gap
    (nothing is skipped silently)."""
    missed = 8
    _a, _b, ann, _bob = cut_subscription_while_others_chat(
        redis_server, server_factory, missed, "--history", "3",
    )
    seqs = [m["seq"] for m in ann if m["type"] == "message"]
    assert seqs[:2] == [1, 2] and seqs[-2:] == [missed + 3, missed + 4], ann
    tail = seqs[2:]
    assert tail == list(range(tail[0], missed + 5)), ann  # contiguous
    gaps = [e for e in ann if e["type"] == "gap"]
    if tail[0] > 3:  # a hole: it must be announced, just before the first after it
        assert len(gaps) == 1, ann
        assert (gaps[0]["since"], gaps[0]["first"]) == (2, tail[0]), gaps
        assert ann[ann.index(gaps[0]) + 1]["seq"] == tail[0], ann


def test_a_node_back_from_a_cut_does_not_announce_members_who_never_left(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    """Node A registers its members again after its link came back; to node B's
    clients, for whom ann never left, that is no news: no second ``join``."""
    _a, _b, ann, bob = cut_subscription_while_others_chat(redis_server, server_factory, 2)
    for events in (ann, bob):
        assert presence_slips(events) == [], events


# ----------------------------------------------------------------------------
# 7. /healthz
# ----------------------------------------------------------------------------


def test_healthz_reports_the_backplane_and_the_redis_state(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    redis_server.stop()  # a node may start before its Redis
    node = Node(server_factory("--redis", redis_server.url), "")
    health = node.health()
    assert health["backplane"] == "redis" and health["redis_state"] == "down", health
    assert health["redis"] == redis_server.url and re.fullmatch(r"[0-9a-f]{8}", health["node"])
    node.id = health["node"]

    async def refused_join() -> None:
        ann = await Client.open(node, room=ROOM, name="ann")
        error = await ann.until(kind("error"))
        assert (error["error"], error["room"]) == ("unavailable", ROOM), error
        await ann.close()

    scenario(refused_join())
    redis_server.start()
    wait_redis_state(node, "up")
    redis_server.kill()
    wait_redis_state(node, "down")
    redis_server.start()
    wait_redis_state(node, "up")
    health = node.health()
    assert (health["backplane"], health["node"]) == ("redis", node.id), health

    async def chat() -> None:
        ann = await Client.enter(node, name="ann")
        await ann.say("up again")
        await ann.until(kind("message", text="up again", seq=1))
        await ann.close()

    scenario(chat())
    # Down before the first "up" is not an outage the log reports.
    assert_clean_log(node, outages=1)


# ----------------------------------------------------------------------------
# 8. History capped in Redis
# ----------------------------------------------------------------------------


def test_history_in_redis_is_capped_near_the_history_setting(
    redis_server: RedisServer, server_factory: ServerFactory,
) -> None:
    history, total = 5, 20
    # Small stream nodes, so that MAXLEN ~ (which drops whole nodes) trims here.
    redis_call(redis_server.port, "CONFIG", "SET", "stream-node-max-entries", 4)
    a, b = two_nodes(server_factory, redis_server, "--history", str(history))

    async def main() -> None:
        ann = await Client.enter(a, name="ann")
        epoch = (await ann.seen(kind("presence", room=ROOM)))["epoch"]
        for k in range(1, total + 1):
            await ann.say(f"m{k}")
        await ann.messages_until(total)
        length = redis_call(redis_server.port, "XLEN", f"wsnet:r:{ROOM}:log")
        assert history <= length < history + 4, length

        async def resume(node: Node, since: int) -> list[Event]:
            client = await Client.open(node, room=ROOM, since=since, epoch=epoch)
            await client.messages_until(total)
            await client.close()
            return [e for e in client.events if e.get("room") == ROOM]

        # Node B does not hold the room: it loads it from Redis.
        for node in (b, a):
            events = await resume(node, 0)
            assert events[0]["type"] == "presence" and events[0]["seq"] == total, events
            gap = events[1]
            assert gap["type"] == "gap" and gap["since"] == 0 and "reset" not in gap, events
            seqs = [e["seq"] for e in events[2:]]
            assert [e["type"] for e in events[2:]] == ["message"] * len(seqs), events
            assert seqs == list(range(gap["first"], total + 1)), events
            assert history <= len(seqs) < total, events
            assert [e["text"] for e in events[2:]] == [f"m{s}" for s in seqs]
        # Inside what is kept: no gap, exactly the rest.
        events = await resume(b, total - 2)
        assert [(e["type"], e.get("seq")) for e in events] == [
            ("presence", total), ("message", total - 1), ("message", total),
        ], events
        await ann.close()

    scenario(main())
