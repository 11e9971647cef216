"""``GET /metrics``: the exposition module on its own, checked against the
reference parser (``prometheus_client``), then the live server's numbers moving
with real traffic, and the ``Handler.metrics`` hook."""

from __future__ import annotations

import asyncio
import gc
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.chat import recv_json, run, welcome, ws_connect
from support.rawclient import RawClient, RawClientFactory, http_get, read_response
from support.servers import ServerProcess, ThreadedServer
from support.wire import OP_PONG, parse_http_head, upgrade_request
from websockets.asyncio.client import ClientConnection

import wsnet
from wsnet._server_metrics import ServerMetrics, close_code_label
from wsnet.metrics import (
    CONTENT_TYPE,
    Counter,
    Gauge,
    Histogram,
    Metric,
    render,
)

InProcess = Callable[..., ThreadedServer]
#: (sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

MIB = 1 << 20


def parse(text: str) -> tuple[list[Any], Samples]:
    """Families (in order) and every sample, through the reference parser."""
    families = list(text_string_to_metric_families(text))
    samples: Samples = {}
    for family in families:
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"sample {key} twice"
            samples[key] = sample.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def scrape(port: int) -> tuple[list[Any], Samples]:
    response = http_get(port, "/metrics")
    assert response.status == 200, response
    assert response.headers["content-type"] == CONTENT_TYPE
    return parse(response.body.decode("utf-8"))


# ----------------------------------------------------------------------------
# The exposition format
# ----------------------------------------------------------------------------


def test_render_exact_text() -> None:
    counter = Counter("demo_events_total", "Events.")
    counter.value += 3
    gauge = Gauge("demo_temperature", "Degrees.")
    gauge.set(-1.5)
    text = render([counter, gauge]).decode()
    assert text == (
        "# HELP demo_events_total Events.\n"
        "# TYPE demo_events_total counter\n"
        "demo_events_total 3\n"
        "# HELP demo_temperature Degrees.\n"
        "# TYPE demo_temperature gauge\n"
        "demo_temperature -1.5\n"
    )


def test_label_values_and_help_are_escaped() -> None:
    nasty = 'say "hi"\\n\nnext line'
    helptext = 'Help with a \\ and a\nnewline and "quotes".'
    family = Counter("demo_requests_total", helptext, ("path",))
    family.labels(nasty).inc(2)
    family.labels("plain").inc()
    text = render([family]).decode()
    assert '# HELP demo_requests_total Help with a \\\\ and a\\nnewline and "quotes".\n' in text
    assert 'demo_requests_total{path="say \\"hi\\"\\\\n\\nnext line"} 2\n' in text
    assert text.count("\n") == 4  # the raw newlines went nowhere but line ends
    families, samples = parse(text)
    assert families[0].documentation == helptext
    assert value(samples, "demo_requests_total", path=nasty) == 2
    assert value(samples, "demo_requests_total", path="plain") == 1


def test_several_labels_in_declared_order() -> None:
    family = Gauge("demo_queue", "Queue.", ("shard", "kind"))
    family.labels("2", "b").set(5)
    family.labels(1, "a").set(7)  # label values are made strings
    text = render([family]).decode()
    assert 'demo_queue{shard="1",kind="a"} 7\n' in text
    _, samples = parse(text)
    assert value(samples, "demo_queue", shard="2", kind="b") == 5
    with pytest.raises(ValueError):
        family.labels("only one")


def test_labels_return_the_same_child() -> None:
    family = Counter("demo_total", "x", ("code",))
    child = family.labels("1000")
    assert family.labels("1000") is child
    child.value += 1
    family.labels(1000).value += 1
    assert child.value == 2


def test_histogram_buckets_are_cumulative() -> None:
    hist = Histogram("demo_size", "Sizes.", (1, 10, 100))
    for v in (0, 0.5, 1, 1.0001, 10, 11, 99.5, 100, 1000, 10**9):
        hist.observe(v)
    text = render([hist]).decode()
    assert text.splitlines()[2:] == [
        'demo_size_bucket{le="1.0"} 3',  # bounds are inclusive: 1 is in le=1
        'demo_size_bucket{le="10.0"} 5',
        'demo_size_bucket{le="100.0"} 8',
        'demo_size_bucket{le="+Inf"} 10',
        f"demo_size_sum {0 + 0.5 + 1 + 1.0001 + 10 + 11 + 99.5 + 100 + 1000 + 10**9!r}",
        "demo_size_count 10",
    ]
    families, samples = parse(text)
    assert families[0].type == "histogram"
    assert value(samples, "demo_size_bucket", le="+Inf") == value(samples, "demo_size_count")
    assert hist.count == 10


def test_empty_histogram_and_explicit_inf_bound() -> None:
    hist = Histogram("demo_wait_seconds", "Waits.", (0.001, 0.01, math.inf))
    assert hist.bounds == (0.001, 0.01)
    text = render([hist]).decode()
    assert 'demo_wait_seconds_bucket{le="+Inf"} 0\n' in text
    assert "demo_wait_seconds_sum 0\ndemo_wait_seconds_count 0\n" in text
    parse(text)


def test_labelled_histogram() -> None:
    hist = Histogram("demo_latency_seconds", "Latency.", (0.1, 1), ("op",))
    hist.labels("get").observe(0.05)
    hist.labels("get").observe(5)
    hist.labels("put").observe(0.5)
    text = render([hist]).decode()
    assert 'demo_latency_seconds_bucket{op="get",le="0.1"} 1\n' in text
    assert 'demo_latency_seconds_bucket{op="get",le="+Inf"} 2\n' in text
    assert 'demo_latency_seconds_count{op="put"} 1\n' in text
    _, samples = parse(text)
    assert value(samples, "demo_latency_seconds_sum", op="get") == 5.05
    assert value(samples, "demo_latency_seconds_bucket", op="put", le="1.0") == 1


def test_special_values() -> None:
    gauges = []
    for name, v in (("demo_nan", math.nan), ("demo_pinf", math.inf), ("demo_ninf", -math.inf)):
        gauge = Gauge(name, "x")
        gauge.set(v)
        gauges.append(gauge)
    big = Gauge("demo_big", "x")
    big.set(1e300)
    text = render([*gauges, big]).decode()
    assert "demo_nan NaN\n" in text and "demo_big 1e+300\n" in text
    assert "demo_pinf +Inf\n" in text and "demo_ninf -Inf\n" in text
    _, samples = parse(text)
    assert math.isnan(value(samples, "demo_nan"))
    assert value(samples, "demo_ninf") == -math.inf
    assert value(samples, "demo_big") == 1e300


def test_labelled_family_without_children_has_only_its_head() -> None:
    text = render([Counter("demo_total", "None yet.", ("code",))]).decode()
    assert text == "# HELP demo_total None yet.\n# TYPE demo_total counter\n"
    families, _ = parse(text)
    assert families[0].samples == []
    assert render([]) == b""


@pytest.mark.parametrize(
    "make",
    [
        lambda: Counter("9starts_with_digit", "x"),
        lambda: Counter("has-dash", "x"),
        lambda: Counter("", "x"),
        lambda: Gauge("ok", "x", ("bad-label",)),
        lambda: Gauge("ok", "x", ("__reserved",)),
        lambda: Gauge("ok", "x", ("a", "a")),
        lambda: Histogram("ok", "x", (1, 1)),
        lambda: Histogram("ok", "x", (10, 1)),
        lambda: Histogram("ok", "x", (1, math.nan)),
        lambda: Histogram("ok", "x", (1,), ("le",)),
    ],
)
def test_invalid_definitions_are_refused(make: Callable[[], Metric]) -> None:
    with pytest.raises(ValueError):
        make()


def test_counter_only_goes_up_and_names_are_unique() -> None:
    counter = Counter("demo_total", "x")
    with pytest.raises(ValueError):
        counter.inc(-1)
    with pytest.raises(ValueError, match="twice"):
        render([counter, Gauge("demo_total", "y")])


def test_close_code_labels_fold_private_codes() -> None:
    assert close_code_label(1000) == "1000"
    assert close_code_label(1006) == "1006"
    assert close_code_label(3000) == close_code_label(3999) == "3xxx"
    assert close_code_label(4000) == close_code_label(4999) == "4xxx"


def test_garbage_collections_are_timed_by_generation() -> None:
    metrics = ServerMetrics()
    before = value(parse(render(metrics.families()).decode())[1],
                   "wsnet_gc_pause_seconds_count", generation="2")
    gc.collect()
    gc.collect()
    after = value(parse(render(metrics.families()).decode())[1],
                  "wsnet_gc_pause_seconds_count", generation="2")
    assert after == before + 2


def test_server_families_parse() -> None:
    metrics = ServerMetrics()
    metrics.upgrades_refused.labels(503).value += 1
    metrics.closes.labels("1001").value += 2
    metrics.broadcast_recipients.observe(3)
    families, samples = parse(render(metrics.families()).decode())
    names = [f.name for f in families]
    assert all(n.startswith("wsnet_") for n in names), names
    assert len(names) >= 13
    types = {f.name: f.type for f in families}
    assert types["wsnet_connections"] == "gauge"
    assert types["wsnet_closes"] == "counter"  # the parser drops "_total"
    assert types["wsnet_broadcast_recipients"] == "histogram"
    assert value(samples, "wsnet_upgrades_refused_total", code="503") == 1
    assert value(samples, "wsnet_closes_total", code="1001") == 2
    assert value(samples, "wsnet_broadcast_recipients_bucket", le="1.0") == 0
    assert value(samples, "wsnet_broadcast_recipients_bucket", le="10.0") == 1
    assert value(samples, "wsnet_broadcast_recipients_bucket", le="100000.0") == 1
    if Path("/proc/self/statm").exists():
        assert value(samples, "wsnet_process_resident_memory_bytes") > MIB


# ----------------------------------------------------------------------------
# The chat server, live
# ----------------------------------------------------------------------------


async def until_message(ws: ClientConnection, text: str, timeout: float = 5.0) -> None:
    """Read frames until the chat message ``text`` arrives; presence may come
    along, anything else fails."""
    deadline = time.monotonic() + timeout
    while True:
        events = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        for event in events:
            assert event["type"] in {"message", "join", "leave", "presence"}, events
            if event["type"] == "message" and event["text"] == text:
                return


def test_chat_metrics_follow_traffic(chat_server: ServerProcess) -> None:
    port = chat_server.port
    with RawClient(port) as client:  # one refused upgrade: wrong version
        client.send(upgrade_request(port, version="8"))
        assert read_response(client).status == 426
    messages = 6

    async def scenario() -> tuple[Samples, Samples]:
        async with (
            ws_connect(chat_server.url + "?name=ann") as a,
            ws_connect(chat_server.url + "?name=bob") as b,
            ws_connect(chat_server.url + "?name=cy") as c,
        ):
            clients = [a, b, c]
            for ws in clients:
                await welcome(ws)
            # One message at a time, each seen by everyone before the next:
            # no two messages share a frame, so each is one delivery per client.
            for i in range(messages):
                await clients[i % 3].send(f"m{i}")
                for ws in clients:
                    await until_message(ws, f"m{i}")
            _, during = await asyncio.to_thread(scrape, port)
            await c.close()  # returns once the server answered the close
            _, after = await asyncio.to_thread(scrape, port)
            return during, after

    during, after = run(scenario())
    assert value(during, "wsnet_connections") == 3
    assert value(during, "wsnet_messages_received_total") == messages
    # Three welcome frames, then each message to three clients.
    assert value(during, "wsnet_deliveries_total") >= 3 + messages * 3
    broadcasts = value(during, "wsnet_broadcasts_total")
    assert broadcasts >= messages
    count = value(during, "wsnet_broadcast_recipients_count")
    assert count == broadcasts
    assert value(during, "wsnet_broadcast_recipients_bucket", le="+Inf") == count
    # The first message may share frames with join events still pending; each
    # later one is one frame to all three, handed to one broadcast.
    single = value(during, "wsnet_broadcast_recipients_bucket", le="1.0")
    assert count - single >= messages - 1
    assert value(during, "wsnet_broadcast_recipients_bucket", le="10.0") == count
    recipients = value(during, "wsnet_broadcast_recipients_sum")
    assert 3 * (messages - 1) <= recipients <= value(during, "wsnet_deliveries_total")
    # 3 WebSockets, the refused upgrade, and this scrape's own socket.
    assert value(during, "wsnet_sockets_accepted_total") == 5
    assert value(during, "wsnet_upgrades_refused_total", code="426") == 1
    assert not [k for k in during if k[0] == "wsnet_closes_total"]
    assert value(during, "wsnet_outbox_bytes") >= 0
    assert value(during, "wsnet_uptime_seconds") > 0
    assert value(during, "wsnet_process_resident_memory_bytes") > MIB
    # Every flush tick reports its lateness once: at most one per 50 ms of life.
    ticks = value(during, "wsnet_tick_lateness_seconds_count")
    assert 1 <= ticks <= value(during, "wsnet_uptime_seconds") / 0.05 + 1
    assert value(during, "wsnet_tick_lateness_seconds_bucket", le="+Inf") == ticks
    for name in (
        "wsnet_slow_consumer_closes_total",
        "wsnet_rate_limited_messages_total",
        "wsnet_keepalive_timeouts_total",
    ):
        assert value(during, name) == 0, name

    assert value(after, "wsnet_connections") == 2
    assert value(after, "wsnet_closes_total", code="1000") == 1
    assert value(after, "wsnet_sockets_accepted_total") == 6
    assert value(after, "wsnet_uptime_seconds") >= value(during, "wsnet_uptime_seconds")


def test_head_metrics_has_headers_and_no_body(chat_server: ServerProcess) -> None:
    port = chat_server.port
    full = http_get(port, "/metrics")
    with RawClient(port) as client:
        client.send(f"HEAD /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
                    .encode())
        data = client.read_until_eof()
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep
    status, headers = parse_http_head(head)
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE
    assert int(headers["content-length"]) > 0
    assert body == b""
    assert full.body.startswith(b"# HELP wsnet_")


def test_metrics_refuses_other_methods(chat_server: ServerProcess) -> None:
    response = http_get(chat_server.port, "/metrics", method="POST")
    assert response.status == 405


# ----------------------------------------------------------------------------
# In process: the application hook and the rarer counters
# ----------------------------------------------------------------------------


class Recorder(wsnet.Handler):
    """Keeps what it heard; ``fill`` queues big frames for the sender."""

    def __init__(self, chunk: int = MIB, chunks: int = 0) -> None:
        self.messages: list[str | bytes] = []
        self.rate_limited = 0
        self.chunk = b"x" * chunk
        self.chunks = chunks
        self.filled = threading.Event()

    def on_message(self, conn: wsnet.Connection, data: str | bytes) -> None:
        self.messages.append(data)
        if data == "fill":
            for _ in range(self.chunks):
                conn.send(self.chunk)
            self.filled.set()
        elif data == "flood":
            for _ in range(1000):  # until the outbox limit refuses
                if not conn.send(self.chunk):
                    break
            self.filled.set()

    def on_rate_limited(self, conn: wsnet.Connection) -> None:
        self.rate_limited += 1


class WithMetrics(Recorder):
    def __init__(self, fail: type[Exception] | None = None, duplicate: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.rooms = Gauge("app_rooms", "Rooms with members.")
        self.errors = Counter("app_publish_errors_total", "Publishes that failed.", ("reason",))
        self.latency = Histogram("app_publish_seconds", "Publish latency.", (0.001, 0.01, 0.1))
        self.duplicate = Gauge("wsnet_connections", "Clashes with the server's.")
        self.clash = duplicate

    def metrics(self) -> list[Metric]:
        if self.fail is not None:
            raise self.fail("broken metrics")
        self.rooms.set(len(self.messages))
        extra: list[Metric] = [self.rooms, self.errors, self.latency]
        return [*extra, self.duplicate] if self.clash else extra


def test_handler_metrics_follow_the_servers(inprocess_server: InProcess) -> None:
    handler = WithMetrics()
    handler.errors.labels('timeout "5s"').inc()
    handler.latency.observe(0.004)
    handler.latency.observe(0.5)
    server = inprocess_server(handler)
    families, samples = scrape(server.port)
    names = [f.name for f in families]
    assert names[-3:] == ["app_rooms", "app_publish_errors", "app_publish_seconds"]
    assert all(n.startswith("wsnet_") for n in names[:-3])
    assert "wsnet_connections" in names
    assert value(samples, "app_rooms") == 0
    assert value(samples, "app_publish_errors_total", reason='timeout "5s"') == 1
    assert value(samples, "app_publish_seconds_bucket", le="0.001") == 0
    assert value(samples, "app_publish_seconds_bucket", le="0.01") == 1
    assert value(samples, "app_publish_seconds_bucket", le="+Inf") == 2
    assert value(samples, "app_publish_seconds_count") == 2
    assert value(samples, "app_publish_seconds_sum") == 0.504


@pytest.mark.parametrize(
    "handler",
    [WithMetrics(fail=RuntimeError), WithMetrics(duplicate=True)],
    ids=["raises", "duplicate-name"],
)
def test_broken_handler_metrics_leave_the_servers(
    inprocess_server: InProcess, handler: WithMetrics, caplog: pytest.LogCaptureFixture,
) -> None:
    server = inprocess_server(handler)
    families, samples = scrape(server.port)
    names = [f.name for f in families]
    assert names and all(n.startswith("wsnet_") for n in names)
    assert value(samples, "wsnet_connections") == 0
    assert "application error in metrics" in caplog.text


def wait_pong(client: RawClient, timeout: float = 5.0) -> None:
    """Ping and wait for the pong: the server has handled everything sent before."""
    client.send(bytes(client.encoder.ping(b"sync")))
    deadline = time.monotonic() + timeout
    while client.recv_frame(max(0.0, deadline - time.monotonic())).opcode != OP_PONG:
        pass


def test_rate_limited_messages_are_counted(
    inprocess_server: InProcess, raw_client: RawClientFactory,
) -> None:
    handler = Recorder()
    server = inprocess_server(handler, rate_limit=0.5, rate_burst=2)
    client = raw_client(server.port)
    client.handshake()
    burst = b"".join(bytes(client.encoder.send_data(f"m{i}", fin=True)) for i in range(6))
    client.send(burst)
    wait_pong(client)
    _, samples = scrape(server.port)
    dropped = value(samples, "wsnet_rate_limited_messages_total")
    assert value(samples, "wsnet_messages_received_total") == 6
    assert len(handler.messages) + dropped == 6
    assert dropped >= 3  # a burst of 2, and at most one token more meanwhile
    assert handler.rate_limited == 1
    assert value(samples, "wsnet_connections") == 1


def test_keepalive_timeout_is_counted(
    inprocess_server: InProcess, raw_client: RawClientFactory,
) -> None:
    server = inprocess_server(Recorder(), ping_interval=0.1, ping_timeout=0.2)
    client = raw_client(server.port)
    client.handshake()  # and never answer a ping
    close = client.recv_close(timeout=5)
    assert close.close_code == 1011
    _, samples = scrape(server.port)
    assert value(samples, "wsnet_keepalive_timeouts_total") == 1
    assert value(samples, "wsnet_closes_total", code="1011") == 1
    assert value(samples, "wsnet_connections") == 0


def _kernel_send_buffer_max() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * MIB


def test_queued_bytes_and_slow_consumer(
    inprocess_server: InProcess, raw_client: RawClientFactory,
) -> None:
    chunks = 12
    handler = Recorder(chunk=MIB, chunks=chunks)
    server = inprocess_server(handler, outbox_limit=16 * MIB, rate_limit=0)
    stalled = raw_client(server.port, rcvbuf=4096, timeout=10)
    stalled.handshake()
    stalled.send_text("fill")  # 12 MiB for a client that reads nothing
    assert handler.filled.wait(5)
    handler.filled.clear()
    _, samples = scrape(server.port)
    queued = value(samples, "wsnet_outbox_bytes")
    # The kernel takes at most its send buffer and the client's small window.
    floor = chunks * MIB - _kernel_send_buffer_max() - 64 * 1024
    assert max(floor, 1) <= queued <= chunks * (MIB + 16)
    assert value(samples, "wsnet_deliveries_total") == chunks
    assert value(samples, "wsnet_slow_consumer_closes_total") == 0

    # The stalled client is not read from any more (its outbox is over the
    # high-water mark): a second one asks for more than the limit at once.
    flooded = raw_client(server.port, timeout=10)
    flooded.handshake()
    flooded.send_text("flood")
    assert handler.filled.wait(5)
    close = flooded.recv_close(timeout=10)  # at the next tick
    assert close.close_code == 1008
    _, samples = scrape(server.port)
    assert value(samples, "wsnet_slow_consumer_closes_total") == 1
    assert value(samples, "wsnet_closes_total", code="1008") == 1
    assert value(samples, "wsnet_connections") == 1
    # The flood queued frames until one found more than the limit waiting.
    flood = value(samples, "wsnet_deliveries_total") - chunks
    # The 16th found 15 MiB and their frame heads waiting; the 17th found more
    # than 16 MiB and was refused.
    assert flood == 16
