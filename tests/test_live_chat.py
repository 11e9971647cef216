"""The chat server end to end: ``python -m wsnet`` in a subprocess, driven by the
``websockets`` client (an independent implementation) and by raw sockets where
the bytes on the wire matter.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import zlib
from typing import Any

import pytest
from support.chat import next_messages, recv_json, run, welcome, ws_connect
from support.rawclient import RawClient, RawClientFactory, http_get, read_response
from support.servers import ServerFactory, ServerProcess
from support.wire import OP_BINARY, OP_TEXT, Frame, build_frame, inflate_message
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.live

Event = dict[str, Any]


async def welcome_frame(ws: ClientConnection) -> list[Event]:
    """The whole first frame: the welcome, URL errors, the default room's presence."""
    events = await recv_json(ws)
    assert events[0]["type"] == "welcome", events
    return events


async def await_joins(ws: ClientConnection, ids: set[str], timeout: float = 10.0) -> None:
    """Read frames until each of ``ids`` joined: each ``join`` once, or (50
    joins at once are a presence storm) in a ``presence_diff``, which may also
    name members already known; nothing else may come."""
    deadline = time.monotonic() + timeout
    singles: list[str] = []
    seen: set[str] = set()
    while not ids <= seen:
        events = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        for e in events:
            if e["type"] == "join":
                singles.append(str(e["id"]))
                seen.add(str(e["id"]))
            else:
                assert e["type"] == "presence_diff" and not e["left"], events
                seen |= {str(m["id"]) for m in e["joined"]}
    assert len(singles) == len(set(singles)) and set(singles) <= ids, (singles, ids)


def frame_events(frame: Frame) -> list[Event]:
    assert frame.opcode == OP_TEXT, frame
    payload = inflate_message(frame.payload) if frame.rsv1 else frame.payload
    events = json.loads(payload.decode("utf-8"))
    assert isinstance(events, list)
    return events


# ----------------------------------------------------------------------------
# Handshake and welcome
# ----------------------------------------------------------------------------


def test_handshake_and_welcome_event(chat_server: ServerProcess) -> None:
    async def scenario() -> None:
        async with ws_connect(chat_server.url + "?name=ann") as ann:
            assert ann.response is not None and ann.response.status_code == 101
            first, presence = await welcome_frame(ann)
            assert first == {"type": "welcome", "id": first["id"], "name": "ann"}
            assert isinstance(first["id"], str) and first["id"]
            me = {"id": first["id"], "name": "ann"}
            assert presence == {
                "type": "presence",
                "room": "lobby",
                "epoch": presence["epoch"],
                "seq": 0,
                "count": 1,
                "members": [me],
            }
            assert isinstance(presence["epoch"], str) and presence["epoch"]

            await ann.send("one")
            await ann.send("two")
            await next_messages(ann, 2)

            # An invalid name falls back to a guest name, and the welcome frame
            # says why; ids differ; the presence snapshot tells a late joiner
            # where the room's sequence stands.
            async with ws_connect(chat_server.url + "?name=%3Cb%3Eno%3C/b%3E") as other:
                second, error, snapshot = await welcome_frame(other)
                assert second["type"] == "welcome"
                assert second["name"] == f"guest-{second['id']}", second
                assert second["id"] != first["id"]
                assert error["type"] == "error" and error["error"] == "bad_name", error
                assert isinstance(error["detail"], str)
                assert snapshot["type"] == "presence" and snapshot["room"] == "lobby"
                assert snapshot["seq"] == 2 and snapshot["epoch"] == presence["epoch"]
                newcomer = {"id": second["id"], "name": second["name"]}
                assert snapshot["members"] == [me, newcomer] and snapshot["count"] == 2
                # ... and the room hears of the newcomer, by id.
                assert await recv_json(ann) == [{"type": "join", "room": "lobby", **newcomer}]

    run(scenario())


# ----------------------------------------------------------------------------
# Fan-out
# ----------------------------------------------------------------------------


def test_fan_out_to_50_clients_exactly_once_in_seq_order(chat_server: ServerProcess) -> None:
    n_clients, n_senders, per_sender = 50, 5, 20
    total = n_senders * per_sender

    async def collect(ws: ClientConnection) -> tuple[list[Event], int]:
        events: list[Event] = []
        frames = 0
        while len(events) < total:
            batch = await recv_json(ws, 15.0)
            assert batch, "an empty batch frame"
            # The joins' presence_diff may still come (clients that saw everyone
            # in their snapshot do not wait for it); nothing else but messages.
            batch = [e for e in batch if e["type"] != "presence_diff"]
            if not batch:
                continue
            frames += 1
            assert all(e["type"] == "message" for e in batch), batch
            events.extend(batch)
        return events, frames

    async def scenario() -> None:
        clients = await asyncio.gather(
            *(ws_connect(f"{chat_server.url}?name=c{i}") for i in range(n_clients)),
        )
        try:
            firsts = await asyncio.gather(*(welcome_frame(ws) for ws in clients))
            ids = {str(f[0]["id"]) for f in firsts}
            assert len(ids) == n_clients
            snapshots = [f[1] for f in firsts]
            assert all(s["type"] == "presence" and s["seq"] == 0 for s in snapshots), snapshots
            # Everyone is here before the measured phase: each client hears of
            # those who joined after it, so only messages are in flight from now on.
            await asyncio.gather(*(
                await_joins(ws, ids - {str(m["id"]) for m in s["members"]})
                for ws, s in zip(clients, snapshots, strict=True)
            ))

            collectors = [asyncio.create_task(collect(ws)) for ws in clients]
            senders = clients[:n_senders]

            async def send_all(index: int, ws: ClientConnection) -> None:
                for j in range(per_sender):
                    await ws.send(json.dumps({"type": "message", "room": "lobby",
                                              "text": f"s{index}-m{j}"}))
                    if j % 4 == 3:
                        await asyncio.sleep(0)  # let senders interleave

            await asyncio.gather(*(send_all(i, ws) for i, ws in enumerate(senders)))
            results = await asyncio.gather(*collectors)
            # Nothing extra is in flight: everyone's next event is this marker.
            await clients[-1].send("end marker")
            tails = await asyncio.gather(*(recv_json(ws, 10.0) for ws in clients))
            for tail in tails:
                assert [(e["seq"], e["text"]) for e in tail] == [(total + 1, "end marker")]
        finally:
            await asyncio.gather(*(ws.close() for ws in clients))

        reference = [(e["seq"], e["from"], e["text"]) for e in results[0][0]]
        for events, frames in results:
            seqs = [e["seq"] for e in events]
            assert seqs == list(range(1, total + 1)), "gap, duplicate or reordering"
            assert [(e["seq"], e["from"], e["text"]) for e in events] == reference
            assert frames <= total
            for e in events:
                assert e["room"] == "lobby" and isinstance(e["ts"], int)
                assert abs(e["ts"] / 1000 - time.time()) < 60, "ts is Unix time in ms"
            for i in range(n_senders):
                mine = [e["text"] for e in events if e["from"] == f"c{i}"]
                assert mine == [f"s{i}-m{j}" for j in range(per_sender)]
        assert len(results) == n_clients

    run(scenario(), timeout=40)


def test_messages_sent_within_one_tick_arrive_in_one_frame(
    chat_server: ServerProcess, raw_client: RawClientFactory,
) -> None:
    raw: RawClient = raw_client(chat_server.port)
    raw.handshake("/?name=raw")
    events = frame_events(raw.recv_data_frame())
    assert events[0]["type"] == "welcome"

    async def scenario() -> None:
        async with ws_connect(chat_server.url, compression=None) as observer:
            newcomer = await welcome(observer)
            # The raw client hears of the observer first, in a tick of its own.
            joined = frame_events(raw.recv_data_frame())
            assert [(e["type"], e["id"]) for e in joined] == [("join", newcomer["id"])]
            # Three masked frames in ONE write: the server reads them in one turn,
            # so they land in one tick and leave as one frame.
            burst = b"".join(
                bytes(raw.encoder.send_data(f"burst {i}", fin=True)) for i in range(3)
            )
            raw.send(burst)
            seen = await recv_json(observer)
            assert [e["text"] for e in seen] == ["burst 0", "burst 1", "burst 2"]
            assert [e["seq"] for e in seen] == [1, 2, 3]
            assert {e["from"] for e in seen} == {"raw"}

    run(scenario())
    mine = frame_events(raw.recv_data_frame())
    assert [(e["seq"], e["text"]) for e in mine] == [(1, "burst 0"), (2, "burst 1"), (3, "burst 2")]


# ----------------------------------------------------------------------------
# Flush delay
# ----------------------------------------------------------------------------


async def measure_latencies(url: str, rounds: int) -> list[float]:
    """Send from A, time until B has it. Each send follows the previous delivery,
    i.e. it lands just after a tick: the worst case for batching."""
    latencies: list[float] = []
    async with ws_connect(url, compression=None) as a, ws_connect(url, compression=None) as b:
        await welcome(a)
        await welcome(b)
        for i in range(rounds):
            start = time.monotonic()
            await a.send(f"latency {i}")
            got = await next_messages(b, 1, timeout=2.0)
            latencies.append(time.monotonic() - start)
            assert got[0]["text"] == f"latency {i}"
            await next_messages(a, 1, timeout=2.0)  # the sender's own copy
    return latencies


def test_flush_delay_is_within_the_flush_interval(server_factory: ServerFactory) -> None:
    server = server_factory("--flush-interval-ms", "50")
    latencies = run(measure_latencies(server.url, 12))
    slack = 0.100  # scheduling noise on a loaded 2-core machine
    assert max(latencies) < 0.050 + slack, latencies
    # The batching is real: messages wait for the tick rather than leaving at once.
    assert statistics.median(latencies) > 0.015, latencies


def test_flush_interval_zero_is_much_faster(server_factory: ServerFactory) -> None:
    server = server_factory("--flush-interval-ms", "0")
    latencies = run(measure_latencies(server.url, 12))
    assert statistics.median(latencies) < 0.010, latencies
    # Every sample but one (a scheduling hiccup) beats even one 50 ms tick.
    assert sorted(latencies)[-2] < 0.050, latencies


# ----------------------------------------------------------------------------
# permessage-deflate
# ----------------------------------------------------------------------------


def test_deflate_negotiated_by_websockets_default_offer(chat_server: ServerProcess) -> None:
    big = "compress me please " * 150 + "end"

    async def scenario() -> None:
        async with ws_connect(chat_server.url) as ws:  # compression="deflate" by default
            assert ws.response is not None
            agreed = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert agreed.startswith("permessage-deflate"), agreed
            assert "server_no_context_takeover" in agreed
            [ext] = ws.protocol.extensions
            assert ext.name == "permessage-deflate"
            await welcome(ws)
            # Both directions go through the extension: the client compresses,
            # the server inflates, re-encodes and compresses the broadcast.
            await ws.send(big)
            [event] = await next_messages(ws, 1)
            assert event["text"] == big

    run(scenario())


def test_no_deflate_option_declines_the_offer(server_factory: ServerFactory) -> None:
    server = server_factory("--no-deflate")

    async def scenario() -> None:
        async with ws_connect(server.url) as ws:
            assert ws.protocol.extensions == []
            assert ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await welcome(ws)

    run(scenario())


def test_big_broadcast_is_compressed_on_the_wire(
    chat_server: ServerProcess, raw_client: RawClientFactory,
) -> None:
    offer = "permessage-deflate; client_max_window_bits"
    deflated: RawClient = raw_client(chat_server.port)
    agreed = deflated.handshake("/?name=zip", extensions=offer)["sec-websocket-extensions"]
    assert agreed.startswith("permessage-deflate") and "server_no_context_takeover" in agreed
    plain: RawClient = raw_client(chat_server.port)
    headers = plain.handshake("/?name=plain")
    assert "sec-websocket-extensions" not in headers
    for client in (deflated, plain):
        assert frame_events(client.recv_data_frame())[0]["type"] == "welcome"
    joined = frame_events(deflated.recv_data_frame())
    assert [(e["type"], e["name"]) for e in joined] == [("join", "plain")]

    big = "the quick brown fox jumps over the lazy dog " * 60

    # The raw deflate client sends its message compressed (RSV1 set), so the
    # server's inflate path is exercised by bytes we made ourselves.
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = comp.compress(big.encode()) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert body.endswith(b"\x00\x00\xff\xff")
    deflated.send(build_frame(OP_TEXT, body[:-4], rsv1=True))

    on_deflate = deflated.recv_data_frame()
    on_plain = plain.recv_data_frame()
    assert on_deflate.rsv1, "a large broadcast to a deflate peer must be compressed"
    assert not on_plain.rsv1, "a peer that did not negotiate deflate must get plain frames"
    assert len(on_deflate.payload) < len(on_plain.payload) // 4
    assert frame_events(on_deflate) == frame_events(on_plain)
    [event] = frame_events(on_plain)
    assert event["text"] == big and event["from"] == "zip"


def test_server_max_window_bits_offer_is_honoured(
    chat_server: ServerProcess, raw_client: RawClientFactory,
) -> None:
    small: RawClient = raw_client(chat_server.port)
    agreed = small.handshake(
        "/?name=small", extensions="permessage-deflate; server_max_window_bits=10",
    )["sec-websocket-extensions"]
    assert "server_max_window_bits=10" in agreed
    large: RawClient = raw_client(chat_server.port)
    large.handshake("/?name=large", extensions="permessage-deflate")
    for client in (small, large):
        assert frame_events(client.recv_data_frame())[0]["type"] == "welcome"
    joined = frame_events(small.recv_data_frame())
    assert [(e["type"], e["name"]) for e in joined] == [("join", "large")]

    # A 1500-character block repeated: a 15-bit window refers back 1500 bytes,
    # which a 10-bit (1 KiB) window cannot hold.
    block = "".join(chr(ord("a") + (i * 7919 + i * i) % 26) for i in range(1500))
    small.send_text(block + block)

    def inflate_in_small_steps(payload: bytes, window_bits: int) -> bytes:
        """Tiny output steps force zlib to use its window for back-references."""
        inflater = zlib.decompressobj(-window_bits)
        out, pending = b"", payload + b"\x00\x00\xff\xff"
        for _ in range(100_000):
            if not pending:
                break
            out += inflater.decompress(pending, 64)
            pending = inflater.unconsumed_tail
        return out

    to_small = small.recv_data_frame()
    to_large = large.recv_data_frame()
    assert to_small.rsv1 and to_large.rsv1
    [event] = json.loads(inflate_in_small_steps(to_small.payload, 10))
    assert event["text"] == block + block
    assert frame_events(to_large) == [event]


def test_message_sent_right_before_a_close_is_still_delivered(
    chat_server: ServerProcess, raw_client: RawClientFactory,
) -> None:
    leaving: RawClient = raw_client(chat_server.port)
    leaving.handshake("/?name=leaving")
    frame_events(leaving.recv_data_frame())

    async def scenario() -> None:
        async with ws_connect(chat_server.url) as observer:
            await welcome(observer)
            leaving.send(
                bytes(leaving.encoder.send_data("last words", fin=True))
                + bytes(leaving.encoder.close(1000, "bye")),
            )
            [event] = await next_messages(observer, 1)
            assert event["text"] == "last words" and event["from"] == "leaving"

    run(scenario())
    assert leaving.recv_close().close_code == 1000
    assert leaving.wait_eof(5)


def test_unicode_chat_text_round_trips(chat_server: ServerProcess) -> None:
    texts = ["ünïcødé", "日本語のテキスト", "emoji 🚀✓", "quotes \" and \\ backslash", "{not json"]

    async def scenario() -> None:
        async with ws_connect(chat_server.url) as a, ws_connect(chat_server.url) as b:
            await welcome(a)
            await welcome(b)
            for text in texts:
                await a.send(text)
            got = await next_messages(b, len(texts))
            assert [e["text"] for e in got] == texts

    run(scenario())


def test_deeply_nested_json_text_is_answered_not_fatal(chat_server: ServerProcess) -> None:
    nested = '{"a":' + "[" * 3000  # 3005 characters: within the 4096 limit

    async def scenario() -> list[Event]:
        async with ws_connect(chat_server.url) as ws:
            await welcome(ws)
            await ws.send(nested)
            events = await recv_json(ws)
            # Still open afterwards.
            await ws.send("after")
            await next_messages(ws, 1)
            return events

    events = run(scenario())
    # Broken JSON is chat text (README, "The chat protocol"), or at worst a refused command.
    assert len(events) == 1
    assert events[0]["type"] in ("message", "error")
    if events[0]["type"] == "message":
        assert events[0]["text"] == nested
    assert "Traceback" not in chat_server.stderr_text()


# ----------------------------------------------------------------------------
# Errors, HTTP routes
# ----------------------------------------------------------------------------


BAD_COMMANDS = [
    ('{"type": 5}', "bad_command"),
    ('{"no": "type"}', "bad_command"),
    ('{"type": "nope"}', "unknown_type"),
    ('{"type": "message", "text": 5}', "bad_command"),
    ('{"type": "message", "room": 7, "text": "x"}', "bad_command"),
    ('{"type": "message", "room": "elsewhere", "text": "hi"}', "not_in_room"),
    ('{"type": "message", "room": "no spaces", "text": "hi"}', "bad_room"),
    ('{"type": "join", "room": "lobby"}', "already_joined"),
    ('{"type": "join", "room": "a/b"}', "bad_room"),
    ('{"type": "join"}', "bad_command"),
    ('{"type": "leave", "room": "elsewhere"}', "not_in_room"),
    ('{"type": "nick", "name": "<b>"}', "bad_name"),
    ('{"type": "nick", "name": 5}', "bad_command"),
    ("   ", "empty_text"),
    ("x" * 4097, "text_too_long"),
]


def test_bad_commands_get_an_error_event_and_the_connection_stays_open(
    chat_server: ServerProcess,
) -> None:
    async def scenario() -> None:
        async with ws_connect(chat_server.url) as ws, ws_connect(chat_server.url) as observer:
            await welcome(ws)
            await await_joins(ws, {str((await welcome(observer))["id"])})
            for text, code in BAD_COMMANDS:
                await ws.send(text)
                events = await recv_json(ws)
                assert len(events) == 1, (text[:40], events)
                assert events[0]["type"] == "error" and events[0]["error"] == code, events
                assert isinstance(events[0]["detail"], str)
            # Still open and still chatting; nobody else saw the errors.
            await ws.send("still here")
            [mine] = await next_messages(ws, 1)
            [theirs] = await next_messages(observer, 1)
            assert mine["text"] == theirs["text"] == "still here"
            assert mine["seq"] == 1, "refused commands must not consume sequence numbers"

    run(scenario())


def test_binary_frame_is_closed_with_1003(chat_server: ServerProcess) -> None:
    async def scenario() -> None:
        async with ws_connect(chat_server.url) as ws:
            await welcome(ws)
            await ws.send(b"\x00\x01binary")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1003

    run(scenario())


def test_binary_frame_via_raw_socket_gets_close_1003_frame(
    chat_server: ServerProcess, raw_client: RawClientFactory,
) -> None:
    raw: RawClient = raw_client(chat_server.port)
    raw.handshake()
    raw.send(build_frame(OP_BINARY, b"\xde\xad\xbe\xef"))
    close = raw.recv_close()
    assert close.close_code == 1003


def test_healthz_reports_open_connections(chat_server: ServerProcess) -> None:
    def healthz() -> dict[str, Any]:
        response = http_get(chat_server.port, "/healthz")
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        body = json.loads(response.body)
        assert isinstance(body, dict)
        return body

    assert healthz()["connections"] == 0

    async def scenario() -> None:
        async with ws_connect(chat_server.url) as a, ws_connect(chat_server.url) as b:
            await welcome(a)
            await welcome(b)
            body = healthz()
            assert body["connections"] == 2
            assert body["status"] == "ok"
        # Closed by the client: the count drops (poll with a deadline).
        deadline = time.monotonic() + 5
        while healthz()["connections"] != 0:
            assert time.monotonic() < deadline, "connections never dropped back to 0"
            await asyncio.sleep(0.02)

    run(scenario())


def test_head_healthz_has_headers_but_no_body(chat_server: ServerProcess) -> None:
    with RawClient(chat_server.port) as client:
        client.send(b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = client.read_until_eof()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b""


@pytest.mark.parametrize("path", ["/ws", "/ws?room=lobby"])
def test_plain_get_on_a_websocket_path_is_426(chat_server: ServerProcess, path: str) -> None:
    response = http_get(chat_server.port, path)
    assert response.status == 426
    assert response.headers["upgrade"].lower() == "websocket"
    assert response.headers["sec-websocket-version"] == "13"
    assert response.headers["connection"].lower() == "close"


@pytest.mark.parametrize("path", ["/nope", "/healthz/x", "/wss"])
def test_unknown_path_is_404(chat_server: ServerProcess, path: str) -> None:
    assert http_get(chat_server.port, path).status == 404


def test_plain_get_offering_h2c_upgrade_is_served_as_http1(chat_server: ServerProcess) -> None:
    with RawClient(chat_server.port) as client:
        client.send(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        )
        response = read_response(client)
    assert response.status == 200
    assert json.loads(response.body)["connections"] == 0
