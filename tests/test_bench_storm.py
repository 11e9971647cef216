"""The storm scenario's load generator (``bench/loadgen.py --resume``): how it
follows a room by its numbering, fed the server's own encoding of the events
(so a change there that it would misread fails here), its reconnect backoff,
and, live, a wsnet process restarted under it: with the SQLite store every
client resumes exactly; with ``--store memory`` (history gone) the same check
reports the loss."""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wsnet.chat.history import Ledger
from wsnet.chat.presence import snapshot_event
from wsnet.chat.protocol import encode_event, frame, message_parts
from wsnet.chat.state import Room

# bench/ is not a package: its modules are imported from its folder.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import loadgen
from wsbench.driver import LoadGen, WorkerSpec
from wsbench.servers import ServerProcess, wsnet_command
from wsbench.settings import QUICK


@pytest.fixture
def worker() -> Iterator[tuple[loadgen.Worker, loadgen.Client]]:
    opts = loadgen.build_parser().parse_args(
        ["--port", "1", "--rooms", "2", "--resume", "--worker-id", "3"])
    a, b = socket.socketpair()
    w = loadgen.Worker(opts)
    c = loadgen.Client(0, a, sampled=False, room=1)
    c.state = loadgen.OPEN
    yield w, c
    a.close()
    b.close()


def presence(seq: int, epoch: str = "e1") -> str:
    room = Room("r1", 0, epoch, Ledger(10, 1 << 20, 1 << 20))
    room.seq = seq
    return encode_event(snapshot_event(room))


def message(seq: int, cid: str | None = None) -> str:
    head, rest = message_parts("r1", "ann", "7", "#r1/1#123#0.0# hello", ts_ms=1, cid=cid)
    return f"{head}{seq}{rest}"


def feed(w: loadgen.Worker, c: loadgen.Client, *events: str) -> None:
    data = frame(list(events)).encode()
    w.room_checks(c, data, len(data))


def test_a_join_answer_sets_the_position_and_each_next_number_is_one_delivery(
    worker: tuple[loadgen.Worker, loadgen.Client],
) -> None:
    w, c = worker
    feed(w, c, '{"type":"welcome","id":"1","name":"b"}', presence(41))
    assert (c.seq, c.epoch, c.joined) == (41, b"e1", True)
    feed(w, c, message(42), message(43))
    assert (c.seq, c.delivered, w.delivered) == (43, 2, 2)
    assert w.track["missing"] == w.track["repeats"] == 0


def test_a_skipped_number_is_missing_a_seen_one_a_repeat_and_a_gap_counts(
    worker: tuple[loadgen.Worker, loadgen.Client],
) -> None:
    w, c = worker
    feed(w, c, presence(10))
    feed(w, c, message(11), message(14), message(12))
    assert w.track["missing"] == 2  # 12 and 13 skipped when 14 came
    assert w.track["repeats"] == 1  # 12 after 14
    assert c.delivered == 1
    feed(w, c, '{"type":"gap","room":"r1","since":14,"first":20}')
    assert w.track["gap_events"] == 1


def test_the_answer_to_a_clients_own_resend_is_no_repeat_but_only_once(
    worker: tuple[loadgen.Worker, loadgen.Client],
) -> None:
    w, c = worker
    feed(w, c, presence(5), message(6, cid="w3.0"))
    c.resent = 1
    feed(w, c, message(6, cid="w3.0"))  # the server's answer to the resend
    assert w.track["repeats"] == 0 and c.resent == 0
    feed(w, c, message(6, cid="w3.0"))
    assert w.track["repeats"] == 1
    c.resent = 1
    feed(w, c, message(6, cid="w4.0"))  # another worker's cid: a repeat
    assert w.track["repeats"] == 2


def test_an_echo_acknowledges_a_senders_message_and_another_epoch_is_a_reset(
    worker: tuple[loadgen.Worker, loadgen.Client],
) -> None:
    w, c = worker
    c.unacked = {b"7": b"frame7", b"8": b"frame8"}
    feed(w, c, presence(0), message(1, cid="w3.7"), message(2, cid="w4.8"))
    assert list(c.unacked) == [b"8"]
    c.joined = False
    feed(w, c, presence(0, epoch="e2"))
    assert w.track["resets"] == 1


def test_the_backoff_is_the_pages(worker: tuple[loadgen.Worker, loadgen.Client]) -> None:
    w, c = worker
    ceilings = []
    for _ in range(8):
        before = time.monotonic()
        w.wait_to_reconnect(c, "eof")
        ceilings.append(w.retries[0][0] - before)
        w.retries.clear()
    limits = [min(15.0, 0.5 * 2 ** k) for k in range(8)]
    assert all(0 <= d <= limit + 0.05 for d, limit in zip(ceilings, limits, strict=True))
    assert c.attempt == 8 and c.state is loadgen.WAITING
    w.wait_to_reconnect(c, "close_1012")  # "service restart": back at once
    assert c.attempt == 1 and w.retries[0][0] - time.monotonic() <= 0.5


# -- live: a wsnet process restarted under the load generator -------------------


def storm(store: str, data_dir: str) -> dict[str, Any]:
    """200 clients in 4 rooms, 20 msg/s in all for 4 s, the server restarted 1 s
    in; ``store``: "sqlite" (the default, in ``data_dir``) or "memory"."""
    def start(port: int) -> ServerProcess:
        argv = wsnet_command(False, None, store=False, port=port)
        store_args = ["--store", "memory"] if store == "memory" else ["--data-dir", data_dir]
        return ServerProcess([*argv, *store_args])

    servers = [start(0)]
    spec = WorkerSpec(servers[0].port, 200, 4, ["--rooms", "4", "--resume"])
    gen = LoadGen(servers[0].port, 200, QUICK, deflate=False, senders=4, connect_timeout=20,
                  specs=[spec])
    try:
        ready = gen.collect("ready", timeout=40)[0]
        assert ready["connections"] == 200 and ready["joined"] == 200

        def restart() -> None:
            servers[0].stop()
            servers.append(start(servers[0].port))

        result = gen.run(servers[-1], 20.0, 4.0, 15.0, midway=(1.0, restart))
        return {"delivered": result.delivered, "expected": result.expected, **result.rooms,
                **{k: v for k, v in result.storm.items() if k != "resumed_ns"},
                "resumed": sum(1 for t in result.storm["resumed_ns"] if t)}
    finally:
        gen.stop()
        for server in servers:
            server.stop()


@pytest.mark.live
def test_a_restart_with_the_sqlite_store_loses_and_repeats_nothing() -> None:
    with tempfile.TemporaryDirectory() as data:
        r = storm("sqlite", data)
    assert r["dropped"] == 200 and r["resumed"] == 200
    assert r["expected"] == 80 * 50  # 80 messages into 4 rooms of 50
    assert r["delivered"] == r["expected"] and r["short_conns"] == r["over_conns"] == 0
    assert r["missing"] == r["repeats"] == r["gap_events"] == r["resets"] == r["unacked"] == 0
    assert r["resent"] > 0  # messages written while the server was down went out after


@pytest.mark.live
def test_a_restart_with_history_in_memory_is_reported_as_lost() -> None:
    with tempfile.TemporaryDirectory() as data:
        r = storm("memory", data)
    assert r["dropped"] == 200 and r["resumed"] == 200
    assert r["resets"] == 200 and r["gap_events"] >= 200  # every client told, none fooled
