"""Room affinity with ``--workers`` (``wsnet._placement``), live: the worker
that accepts an upgrade hands the socket, with the bytes it read, to the worker
that owns the URL's room, so a room's members share one worker. Which worker
holds a connection is read from /proc (tests/test_workers.py's helpers)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from support.procs import RedisServer
from support.rawclient import RawClient, RawClientFactory, http_get
from support.servers import ServerFactory, ServerProcess
from support.waiting import wait_for
from support.wire import OP_TEXT
from test_workers import owner_map, worker_pids
from websockets.sync.client import connect

from wsnet._placement import BOARD_FILE, STALE_AFTER, LoadBoard, owner

pytestmark = pytest.mark.live

WORKERS = 3
DEADLINE = 10.0


def rooms_owned_by(slots: list[int]) -> list[str]:
    """One room name per slot in ``slots`` (owner() over WORKERS slots)."""
    found = []
    for slot in slots:
        found.append(next(name for i in range(10_000)
                          if owner(name := f"room{i}", WORKERS) == slot and name not in found))
    return found


def start(server_factory: ServerFactory, redis: RedisServer) -> tuple[ServerProcess, set[int]]:
    server = server_factory("--workers", str(WORKERS), "--redis", redis.url)
    return server, worker_pids(server, WORKERS)


def join(raw_client: RawClientFactory, port: int, room: str, *, eager: bytes = b"") -> RawClient:
    client: RawClient = raw_client(port)
    client.handshake(f"/?room={room}", eager=eager)
    # The welcome, then (a Redis round trip later) the room's presence: joined.
    end = time.monotonic() + DEADLINE
    while True:
        frame = client.recv_data_frame(timeout=max(0.0, end - time.monotonic()))
        assert frame.opcode == OP_TEXT, frame
        if any(e["type"] == "presence" for e in json.loads(frame.payload)):
            return client


def board_of(pid: int) -> LoadBoard:
    """The node's load board, mapped at the slot of worker ``pid`` (its options)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    node_dir = argv[argv.index("--node-dir") + 1]
    index = int(argv[argv.index("--worker-index") + 1])
    return LoadBoard(os.path.join(node_dir, BOARD_FILE), WORKERS, index)


def handoffs(port: int) -> dict[str, float]:
    """wsnet_handoffs_total by outcome, for the whole node."""
    body = http_get(port, "/metrics").body.decode()
    counts: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("wsnet_handoffs_total{"):
            labels, value = line.split("} ")
            counts[labels.split('"')[1]] = float(value)
    return counts


def settled(port: int, upgrades: int) -> dict[str, float]:
    """The counts once every one of ``upgrades`` was either served where it
    landed or handed over once (the node's counters come from 1 s snapshots)."""
    def counted() -> dict[str, float] | None:
        c = handoffs(port)
        done = c.get("local", 0) + c.get("sent", 0) + c.get("spilled", 0) == upgrades
        return c if done and c.get("received", 0) == c.get("sent", 0) else None
    return wait_for(f"{upgrades} upgrades counted", counted)


def texts_until(client: RawClient, wanted: set[str]) -> set[str]:
    """Message texts received until every one of ``wanted`` came (or the deadline)."""
    seen: set[str] = set()
    end = time.monotonic() + DEADLINE
    while not wanted <= seen:
        try:
            frame = client.recv_data_frame(timeout=max(0.0, end - time.monotonic()))
        except TimeoutError:
            raise AssertionError(f"missing {sorted(wanted - seen)}") from None
        assert frame.opcode == OP_TEXT, frame
        seen |= {e["text"] for e in json.loads(frame.payload) if e["type"] == "message"}
    return seen


def test_a_rooms_members_share_the_worker_that_owns_it(
    server_factory: ServerFactory, raw_client: RawClientFactory, redis_server: RedisServer,
) -> None:
    server, workers = start(server_factory, redis_server)
    rooms = rooms_owned_by([1, 2, 3, 1])  # two rooms share slot 1
    members = {room: [join(raw_client, server.port, room) for _ in range(8)] for room in rooms}
    every = [c for cs in members.values() for c in cs]
    where = owner_map(server, every, workers)
    pid_of = {}
    for room, clients in members.items():
        pids = {where[c.sock.getsockname()[1]] for c in clients}
        assert len(pids) == 1, (room, pids)
        pid_of[room] = pids.pop()
    assert pid_of[rooms[0]] == pid_of[rooms[3]]  # same owner slot, same worker
    assert len({pid_of[r] for r in rooms[:3]}) == 3  # one slot each: every worker
    # Each of the 32 upgrades was either served where it landed or handed over
    # once (the node's counters come from 1 s snapshots: wait for them).
    counts = settled(server.port, 32)
    assert counts["sent"] > 0 and "spilled" not in counts and "failed" not in counts, counts
    # An independent client in the room, wherever it lands, talks with the others.
    room = rooms[1]
    with connect(f"ws://127.0.0.1:{server.port}/?room={room}&name=witness",
                 open_timeout=DEADLINE) as witness:
        assert json.loads(witness.recv(timeout=DEADLINE))[0]["type"] == "welcome"
        witness.send(json.dumps({"type": "message", "room": room, "text": "from the witness"}))
        assert texts_until(members[room][0], {"from the witness"})
        members[room][1].send_text(json.dumps({"type": "message", "room": room, "text": "back"}))
        end = time.monotonic() + DEADLINE
        heard: set[str] = set()
        while "back" not in heard:
            frames = json.loads(witness.recv(timeout=max(0.0, end - time.monotonic())))
            heard |= {e.get("text") for e in frames if e["type"] == "message"}


def test_bytes_sent_with_the_request_travel_with_the_handed_over_socket(
    server_factory: ServerFactory, raw_client: RawClientFactory, redis_server: RedisServer,
) -> None:
    """A client may send its first message in the same write as the upgrade:
    the worker that hands the socket over has read it, and must pass it on.
    (The listener has joined first: the room is loaded in its owner, so a
    probe's join there is at once, and its message is not refused as sent
    before its join.)"""
    server, _ = start(server_factory, redis_server)
    (room,) = rooms_owned_by([2])
    listener = join(raw_client, server.port, room)
    wanted = set()
    for i in range(12):  # accepted by any worker: most land away from the owner
        text = f"eager {i}"
        wanted.add(text)
        probe: RawClient = raw_client(server.port)
        frame = probe.encoder.send_data(
            json.dumps({"type": "message", "room": room, "text": text}), fin=True)
        probe.handshake(f"/?room={room}", eager=bytes(frame))
    assert texts_until(listener, wanted) >= wanted
    counts = settled(server.port, 13)
    assert counts["sent"] > 0, counts


def test_a_stopped_owner_gets_nothing_and_its_rooms_are_served_elsewhere(
    server_factory: ServerFactory, raw_client: RawClientFactory, redis_server: RedisServer,
) -> None:
    """A worker that stops writing its load (stuck, crashed, draining) is not
    handed anything after STALE_AFTER: its rooms' newcomers are served where
    they land instead of waiting for it."""
    server, workers = start(server_factory, redis_server)
    (room,) = rooms_owned_by([3])
    first = join(raw_client, server.port, room)
    owner_pid = owner_map(server, [first], workers)[first.sock.getsockname()[1]]
    os.kill(owner_pid, signal.SIGSTOP)
    try:
        board = board_of(owner_pid)
        wait_for("the stopped owner's slot to go stale", lambda: (
            time.monotonic() - board.read()[board.me - 1][1] > STALE_AFTER + 0.05) or None)
        late = [join(raw_client, server.port, room) for _ in range(4)]
        where = owner_map(server, late, workers - {owner_pid})
        assert owner_pid not in where.values()
    finally:
        os.kill(owner_pid, signal.SIGCONT)
    counts = wait_for("the spills counted",
                      lambda: c if (c := handoffs(server.port)).get("spilled", 0) >= 4 else None)
    assert counts["spilled"] >= 4, counts
