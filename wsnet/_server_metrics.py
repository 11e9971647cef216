"""The server's own metric families, counted where each event happens in the
core; built from the public ``wsnet.metrics`` types."""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from wsnet.metrics import Counter, Gauge, Histogram, Metric

__all__ = ["GC_PAUSES", "RECIPIENT_BUCKETS", "ServerMetrics", "close_code_label",
           "process_rss_bytes"]

#: Recipients per broadcast: one client, a room, a big room, everyone.
RECIPIENT_BUCKETS = (1, 10, 100, 1000, 10000, 100000)


def close_code_label(code: int) -> str:
    """A close code as a label value. Peers choose private codes (3000-4999)
    freely; folding them keeps a client from creating thousands of series."""
    if 3000 <= code <= 3999:
        return "3xxx"
    if 4000 <= code <= 4999:
        return "4xxx"
    return str(code)


def process_rss_bytes() -> int | None:
    """This process's resident set size, or None where /proc is missing."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class GcPauses:
    """The cyclic garbage collector's pauses, by generation (``gc.callbacks``):
    a single-threaded loop stands still while one runs, so a long one is a
    latency spike every client sees. One per process, as the collector is."""

    def __init__(self) -> None:
        self.frozen = Gauge(
            "wsnet_gc_frozen_objects",
            "Objects in the collector's permanent generation (Config.gc_freeze).",
        )
        self.histogram = Histogram(
            "wsnet_gc_pause_seconds",
            "Pauses of CPython's cyclic garbage collector, by generation.",
            (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            ["generation"],
        )
        self._children = [self.histogram.labels(g) for g in range(3)]
        self._started = 0.0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self._children[info["generation"]].observe(time.perf_counter() - self._started)
            self._started = 0.0


GC_PAUSES = GcPauses()


class ServerMetrics:
    """What ``Server`` counts. Counters move where the event happens; gauges
    are set when ``/metrics`` is scraped."""

    __slots__ = (
        "connections",
        "sockets_accepted",
        "upgrades_refused",
        "upgrades_abandoned",
        "messages_received",
        "deliveries",
        "broadcasts",
        "broadcast_recipients",
        "outbox_bytes",
        "slow_consumer_closes",
        "rate_limited",
        "keepalive_timeouts",
        "closes",
        "handoffs",
        "tick_lateness",
        "uptime",
        "rss",
    )

    def __init__(self) -> None:
        GC_PAUSES.install()
        self.connections = Gauge("wsnet_connections", "Open WebSocket connections.")
        self.sockets_accepted = Counter(
            "wsnet_sockets_accepted_total",
            "Sockets accepted from the listener (also those closed at once by the "
            "per-address limit).",
        )
        self.upgrades_refused = Counter(
            "wsnet_upgrades_refused_total",
            "WebSocket upgrade requests refused, by HTTP status.",
            ("code",),
        )
        self.upgrades_abandoned = Counter(
            "wsnet_upgrades_abandoned_total",
            "Upgrade requests whose client had closed its side before they were "
            "answered (most gave up while queued): answered, then closed, and "
            "never opened to the application.",
        )
        self.messages_received = Counter(
            "wsnet_messages_received_total",
            "Whole messages received from clients (also those then dropped by the "
            "rate limit).",
        )
        self.deliveries = Counter(
            "wsnet_deliveries_total",
            "Data frames queued to clients (one per recipient of a broadcast).",
        )
        self.broadcasts = Counter("wsnet_broadcasts_total", "Calls to Server.broadcast.")
        self.broadcast_recipients = Histogram(
            "wsnet_broadcast_recipients",
            "Connections a broadcast was queued for.",
            RECIPIENT_BUCKETS,
        )
        self.outbox_bytes = Gauge(
            "wsnet_outbox_bytes", "Bytes queued in all connections' outboxes, not yet sent.",
        )
        self.slow_consumer_closes = Counter(
            "wsnet_slow_consumer_closes_total",
            "Connections closed 1008 because too much output waited for them.",
        )
        self.rate_limited = Counter(
            "wsnet_rate_limited_messages_total",
            "Messages from clients dropped by the rate limit.",
        )
        self.keepalive_timeouts = Counter(
            "wsnet_keepalive_timeouts_total",
            "Connections closed 1011 because no pong came within the ping timeout.",
        )
        self.closes = Counter(
            "wsnet_closes_total",
            "WebSocket connections that stopped being open, by close code (1006: the "
            "peer vanished; 3xxx and 4xxx: private-use codes).",
            ("code",),
        )
        self.handoffs = Counter(
            "wsnet_handoffs_total",
            "With --workers, upgrades with an affinity key (the chat's room), by "
            "outcome: local (this worker owns the key), sent (handed to its owner), "
            "received (handed here), spilled (its owner is gone or holds more than "
            "its share: served here), failed (the hand-off could not be sent).",
            ("outcome",),
        )
        self.tick_lateness = Histogram(
            "wsnet_tick_lateness_seconds",
            "How late each flush tick ran past its point on the grid: the loop's "
            "stalls (a long turn, a collection, a starved process), which every "
            "message queued meanwhile waited out too.",
            (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5),
        )
        self.uptime = Gauge("wsnet_uptime_seconds", "Seconds since the server was created.")
        self.rss = Gauge(
            "wsnet_process_resident_memory_bytes", "Resident memory of this process.",
        )

    def families(self) -> list[Metric]:
        """Every family in exposition order; RSS only where it can be read."""
        families: list[Metric] = [
            self.connections,
            self.sockets_accepted,
            self.upgrades_refused,
            self.upgrades_abandoned,
            self.messages_received,
            self.deliveries,
            self.broadcasts,
            self.broadcast_recipients,
            self.outbox_bytes,
            self.slow_consumer_closes,
            self.rate_limited,
            self.keepalive_timeouts,
            self.closes,
            self.handoffs,
            self.tick_lateness,
            self.uptime,
            GC_PAUSES.histogram,
            GC_PAUSES.frozen,
        ]
        GC_PAUSES.frozen.value = gc.get_freeze_count()
        rss = process_rss_bytes()
        if rss is not None:
            self.rss.value = rss
            families.append(self.rss)
        return families
